"""Shared helpers of the text-encoder pack's tests: the architectures, batches and comparisons.

Every architecture comes from the pack's own ``bt_register_layers`` (so a new mapping is tested
as soon as it is registered), plus a few variants that exercise paths the defaults do not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import bt_plugins_encoders.plugin as encoders_plugin
import pytest
import torch
from bt_plugins_encoders.examples import example_config

import bt_core
from bt_core import BetterTransformer, BetterTransformerBaseLayer, BetterTransformerError
from bt_core.registry import PluginRegistry
from bt_core.testing import registry_with

ATOL = 1e-5
STRATEGIES = ("default", "fused", "packed", "dense")

#: BART-family seq2seq types: their example model is the encoder alone (the shared suites read
#: ``last_hidden_state``, ``hidden_states``, ``attentions`` of an encoder); the whole
#: ``...ForConditionalGeneration`` (logits, ``generate``) is tested in test_seq2seq.py.
SEQ2SEQ_TYPES = frozenset(
    {"bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "fsmt", "m2m_100", "marian", "mbart"}
    | {"pegasus", "plbart", "prophetnet"}
)


@dataclass(frozen=True)
class Case:
    """One architecture under test: a small config and what the fused kernel may do with it."""

    id: str
    model_type: str
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Whether ``torch._transformer_encoder_layer_fwd`` computes this layer exactly (the converted
    #: layer says so), and the reason it gives when it cannot.
    fused: bool = True
    not_fused_because: str | None = None

    def config(self, **extra: Any) -> Any:
        return example_config(self.model_type, **{**self.overrides, **extra})


def _kernel_blocker(mapping: Any) -> str | None:
    """Why the fused kernel cannot compute the example model's layers, as the converted layers say."""
    from bt_core._validate import kernel_blocker
    from bt_core.registry import PluginRegistry

    registry = PluginRegistry(discover=False)
    registry.register(encoders_plugin, "encoders")
    model_class = mapping.load_example_model_class()
    config = mapping.example_config()
    model = (model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)).eval()
    converted = BetterTransformer.transform(model, registry=registry)
    reasons = {kernel_blocker(m) for m in converted.modules() if isinstance(m, BetterTransformerBaseLayer)}
    static = next(iter(sorted(r for r in reasons if r)), None)
    if static is not None:
        return static
    # What only a call shows (a score bias or rotary tables the encoder hands the layers).
    try:
        with torch.inference_mode(), bt_core.force_strategy("fused"):
            converted(**make_batch(config, "padded"))
    except BetterTransformerError as exc:
        return str(exc).split("was forced, but ", 1)[-1].split("; unset it")[0]
    return None


def _cases() -> list[Case]:
    cases = []
    for mapping in encoders_plugin.bt_register_layers():
        blocker = _kernel_blocker(mapping)
        cases.append(Case(mapping.model_type, mapping.model_type, fused=blocker is None, not_fused_because=blocker))
    cases += [
        # ALBERT with exact gelu: the fused kernel runs, on a group of two layers called twice.
        Case("albert-gelu-shared", "albert", {"hidden_act": "gelu", "inner_group_num": 2}),
        # An odd head count: PyTorch's fast path refuses it, the ordinary-op strategies do not.
        Case(
            "bert-3-heads",
            "bert",
            {"hidden_size": 48, "num_attention_heads": 3},
            fused=False,
            not_fused_because="head count is odd",
        ),
        Case("distilbert-relu", "distilbert", {"activation": "relu"}),
    ]
    return cases


def strategy_params() -> list[Any]:
    """``(case, strategy)`` for every strategy that can run the case exactly."""
    return [
        pytest.param(case, strategy, id=f"{case.id}-{strategy}")
        for case in CASES
        for strategy in STRATEGIES
        if strategy != "fused" or case.fused
    ]


@pytest.fixture(autouse=True, scope="module")
def encoders_registry() -> Iterator[PluginRegistry]:
    """A registry holding only this pack, installed as bt's default for the module, then restored."""
    with registry_with(encoders_plugin, name="encoders") as registry:
        yield registry


@pytest.fixture(autouse=True)
def _quiet_reference_path_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*taking the reference path.*")
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
        yield


def build(
    case: Case, model_class: Any = None, *, seed: int = 0, attn_implementation: str | None = None, **overrides: Any
) -> torch.nn.Module:
    """A random-weight model of ``case`` (the mapping's example model class, ``AutoModel`` for most, unless
    ``model_class``), in eval mode."""
    torch.manual_seed(seed)
    config = case.config(**overrides)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if model_class is None:
        (mapping,) = [m for m in encoders_plugin.bt_register_layers() if m.model_type == case.model_type]
        model_class = mapping.load_example_model_class()
    if hasattr(model_class, "from_config"):  # an Auto class
        model = model_class.from_config(config, **kwargs)
    else:
        if attn_implementation:
            config._attn_implementation = attn_implementation
        model = model_class(config)
    return model.eval()


#: Lengths of the rows of each batch kind, and the padded length.
BATCHES: dict[str, tuple[tuple[int, ...], int]] = {
    "padded": ((11, 6, 3), 11),  # varied lengths, the longest row fills the batch
    "unpadded": ((11, 11, 11), 11),  # no padding at all
    "short": ((7, 5, 2), 11),  # every row padded: the longest is shorter than the padded length
}


def make_batch(config: Any, kind: str, *, left: bool = False, seed: int = 1) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of a batch ``kind`` (see ``BATCHES``), padded on the right
    unless ``left``; padding positions hold the config's pad token."""
    lengths, seq_len = BATCHES[kind]
    generator = torch.Generator().manual_seed(seed)
    vocab = int(config.vocab_size)
    ids = torch.randint(5, vocab - 1, (len(lengths), seq_len), generator=generator)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left:
            mask[row, seq_len - length :] = 1
        else:
            mask[row, :length] = 1
    pad = getattr(config, "pad_token_id", None) or 0
    ids = ids.masked_fill(mask == 0, pad)
    return {"input_ids": ids, "attention_mask": mask}


def assert_close_on_valid(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor, atol: float = ATOL) -> None:
    """Same shape, and equal within ``atol`` on every position ``mask`` marks as a real token."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != original {tuple(expected.shape)}"
    keep = mask.bool()
    diff = (actual[keep] - expected[keep]).abs().max().item()
    assert diff <= atol, f"max difference on valid tokens {diff:.3g} > {atol}"


def converted_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    from bt_core import BetterTransformerBaseLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BetterTransformerBaseLayer)]


def convert_copy(model: torch.nn.Module) -> torch.nn.Module:
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert converted_layers(converted), "nothing was converted"
    return converted


def zero_dropout_overrides(case: Case) -> dict[str, float]:
    """Every dropout probability of the case's config set to 0."""
    config = case.config()
    return {
        key: 0.0
        for key, value in config.to_dict().items()
        if ("dropout" in key or "layerdrop" in key) and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


#: Built last: deciding what the fused kernel can run converts each example model once.
CASES: list[Case] = _cases()
CASE_IDS = [c.id for c in CASES]

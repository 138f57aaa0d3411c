"""Tiny models, batches and comparisons shared by the tests of what users put around a converted model.

Every model is built from a seed with every dropout at 0 and every parameter perturbed, so biases and
layer-norm parameters are not their initial zeros and ones (a dropped bias or LoRA update would
otherwise go unseen). Batches are small and padded: row lengths 10, 7 and 4 in a length-10 batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import bt_plugins_encoders.plugin as encoders_plugin
import bt_plugins_vision.plugin as vision_plugin
import pytest
import torch
import transformers
from torch import nn

from bt_core import BetterTransformerBaseLayer
from bt_core.registry import PluginRegistry
from bt_core.testing import registry_with

ATOL = 1e-5
#: Row lengths of the standard padded batch and its padded length; another layout of the same shape and
#: the same number of real tokens (so even the packed token matrix has the same shape); no padding.
LENGTHS = (10, 7, 4)
SEQ_LEN = 10
OTHER_LENGTHS = (4, 10, 7)
UNPADDED = (10, 10, 10)

#: The BERT every surrounding wraps: hidden 64, 2 layers, 4 heads, feed-forward 128, vocabulary 100.
TINY_BERT: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 100,
    "max_position_embeddings": 32,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}

#: The same sizes for the other text encoders whose heads read position 0.
TINY_TEXT: dict[str, dict[str, Any]] = {
    "bert": TINY_BERT,
    "roberta": {**TINY_BERT, "pad_token_id": 1},
    "xlm-roberta": {**TINY_BERT, "pad_token_id": 1},
    "electra": {**TINY_BERT, "embedding_size": 32},
    "distilbert": {
        "dim": 64,
        "n_layers": 2,
        "n_heads": 4,
        "hidden_dim": 128,
        "vocab_size": 100,
        "max_position_embeddings": 32,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "seq_classif_dropout": 0.0,
    },
}


@pytest.fixture(autouse=True)
def both_packs() -> Iterator[PluginRegistry]:
    """A fresh registry holding both packs, bt's default for one test."""
    with registry_with(encoders=encoders_plugin, vision=vision_plugin) as registry:
        yield registry


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*taking the reference path.*")
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
        yield


def seed_everything(seed: int = 0) -> None:
    torch.manual_seed(seed)


def perturb(model: nn.Module, seed: int = 3) -> nn.Module:
    """Add noise to every floating-point parameter, so no bias is zero and no norm is the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.device.type != "meta":
                param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def text_config(model_type: str = "bert", **overrides: Any) -> Any:
    return transformers.AutoConfig.for_model(model_type, **{**TINY_TEXT[model_type], **overrides})


def build_text(
    model_class: str = "BertModel",
    model_type: str = "bert",
    *,
    seed: int = 0,
    attn_implementation: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """A tiny random-weight text model of ``model_class`` in eval mode, perturbed."""
    seed_everything(seed)
    config = text_config(model_type, **overrides)
    cls = getattr(transformers, model_class)
    if attn_implementation is not None:
        model = cls._from_config(config, attn_implementation=attn_implementation)
    else:
        model = cls(config)
    return perturb(model.eval())


def build_bert(model_class: str = "BertModel", **overrides: Any) -> nn.Module:
    return build_text(model_class, "bert", **overrides)


def build_vision(name: str) -> nn.Module:
    """A tiny random-weight DINOv2, BEiT or data2vec-vision model (the vision pack's example configs)."""
    configs = {
        "dinov2": (vision_plugin.dinov2_config, "Dinov2Model"),
        "beit": (vision_plugin.beit_config, "BeitModel"),
        "data2vec_vision": (vision_plugin.data2vec_vision_config, "Data2VecVisionModel"),
    }
    config_fn, model_class = configs[name]
    config = config_fn()
    for key, value in config.to_dict().items():
        if ("dropout" in key or "drop_path" in key) and isinstance(value, float):
            setattr(config, key, 0.0)
    seed_everything(0)
    return perturb(getattr(transformers, model_class)(config).eval())


def pixel_batch(model: nn.Module, batch: int = 3) -> dict[str, torch.Tensor]:
    return {"pixel_values": vision_plugin.pixels(model.config, batch)}


def batch(
    config: Any, lengths: tuple[int, ...] = LENGTHS, seq_len: int = SEQ_LEN, *, left: bool = False, seed: int = 1
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` with rows of ``lengths`` real tokens, padded to ``seq_len``
    on the right (or the left); padded positions hold the config's pad token."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, int(config.vocab_size) - 1, (len(lengths), seq_len), generator=generator)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left:
            mask[row, seq_len - length :] = 1
        else:
            mask[row, :length] = 1
    pad = getattr(config, "pad_token_id", None) or 0
    return {"input_ids": ids.masked_fill(mask == 0, pad), "attention_mask": mask}


def run(model: nn.Module, inputs: Mapping[str, torch.Tensor], **kwargs: Any) -> Any:
    """One inference forward."""
    with torch.inference_mode():
        return model(**inputs, **kwargs)


def assert_close_on_real(
    actual: torch.Tensor | None, expected: torch.Tensor | None, mask: torch.Tensor | None = None, atol: float = ATOL
) -> None:
    """Same shape, and equal within ``atol`` wherever ``mask`` ((batch, seq)) marks a real token (an output
    the original does not compute, such as a pooler a model lacks, must be missing in both)."""
    if expected is None or actual is None:
        assert actual is None and expected is None, f"original gives {expected!r}, converted {actual!r}"
        return
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != original {tuple(expected.shape)}"
    if mask is not None:
        keep = mask.bool()
        actual, expected = actual[keep], expected[keep]
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"max difference {diff:.3g} > {atol}"


def converted_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BetterTransformerBaseLayer)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if (a.dtype, a.shape, a.device, a.is_quantized) != (b.dtype, b.shape, b.device, b.is_quantized):
            return False
        if a.device.type == "meta":
            return True
        if a.is_quantized:
            return torch.equal(a.int_repr(), b.int_repr()) and torch.equal(a.dequantize(), b.dequantize())
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def snapshot(model: nn.Module) -> dict[str, Any]:
    """A deep copy of ``model.state_dict()`` (tensors cloned), to compare against later."""

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        if isinstance(value, (tuple, list)):
            return type(value)(copy(v) for v in value)
        return value

    return {key: copy(value) for key, value in model.state_dict().items()}


def assert_state_dict_identical(model: nn.Module, before: Mapping[str, Any]) -> None:
    """Same keys in the same order, and every value bit-identical (same dtype, shape, device)."""
    after = model.state_dict()
    assert list(after) == list(before), "state_dict keys changed"
    changed = [key for key in before if not _same(after[key], before[key])]
    assert not changed, f"state_dict values changed: {changed[:5]}"


def assert_unchanged(
    model: nn.Module,
    before: Mapping[str, Any],
    inputs: Mapping[str, torch.Tensor] | None = None,
    expected: Any = None,
    read: Any = None,
) -> None:
    """After a refused transform: no converted layer, the same state_dict, and (given ``inputs``) outputs
    bit-identical to ``expected``, the model's outputs before the attempt (``read`` picks the tensor)."""
    assert not converted_layers(model), f"layers were converted: {converted_layers(model)}"
    assert_state_dict_identical(model, before)
    if inputs is not None:
        read = read or (lambda out: out.last_hidden_state)
        assert torch.equal(read(run(model, inputs)), read(expected)), "outputs changed after the refusal"


class LastHiddenState(nn.Module):
    """``model(input_ids, attention_mask).last_hidden_state`` as a module of positional tensors, for
    tracers and exporters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

"""RoFormer and ESM: encoders whose attention rotates queries and keys, converted exactly.

RoFormer rotates interleaved channel pairs by a sinusoidal table its encoder computes once; ESM-2
rotates halves (``rotate_half``) by a ``(cos, sin)`` pair its model computes once, and ESM-1b has no
positions in the layer at all. Every test here registers the two adapters in a registry of its own,
so it checks the adapters whether or not the pack's plugin maps them yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import bt_core
from bt_core import BetterTransformer, LayerMapping, UnsupportedModelError, hookimpl
from bt_core.registry import PluginRegistry
from bt_core.testing import AdapterConformance

from .conftest import assert_close_on_valid, converted_layers

_ROFORMER = "bt_plugins_encoders.roformer:RoFormerLayerAdapter"
_ESM = "bt_plugins_encoders.esm:EsmLayerAdapter"
_SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
#: ESM-2's vocabulary layout: <cls>=0, <pad>=1, <eos>=2, <unk>=3, amino acids, <mask>=32.
_ESM_TOKENS = {"vocab_size": 33, "pad_token_id": 1, "mask_token_id": 32, "eos_token_id": 2}


def roformer_config(**overrides: Any) -> Any:
    from transformers import RoFormerConfig

    return RoFormerConfig(**{**_SIZES, "vocab_size": 128, **overrides})


def esm_config(**overrides: Any) -> Any:
    """ESM-2 as published: rotary positions, token dropout, no layer norm before the layers."""
    from transformers import EsmConfig

    esm2 = {"position_embedding_type": "rotary", "token_dropout": True, "emb_layer_norm_before": False}
    return EsmConfig(**{**_SIZES, **_ESM_TOKENS, **esm2, **overrides})


def esm1b_config(**overrides: Any) -> Any:
    """ESM-1b: learned absolute positions in the embeddings, a layer norm before the layers."""
    return esm_config(position_embedding_type="absolute", token_dropout=False, emb_layer_norm_before=True, **overrides)


class RotaryPlugin:
    """The two adapters, registered in-process (the kit runs every check on each mapping)."""

    def __init__(self, esm: Any = esm_config) -> None:
        self.esm = esm

    @hookimpl
    def bt_plugin_api_version(self) -> str:
        return "1.1"

    @hookimpl
    def bt_register_layers(self) -> list[LayerMapping]:
        return [
            LayerMapping("roformer", "RoFormerLayer", _ROFORMER, example_config=roformer_config),
            LayerMapping("esm", "EsmLayer", _ESM, example_config=self.esm),
        ]


class TestRotaryEncodersConform(AdapterConformance):
    """RoFormer and ESM-2 pass every check of the kit third-party plugins run."""

    plugin = RotaryPlugin()


class TestAbsolutePositionEsmConforms(AdapterConformance):
    """ESM-1b (absolute positions): a plain pre-norm layer, which the fused kernel may run."""

    plugin = RotaryPlugin(esm=esm1b_config)
    model_types = ("esm",)


# -- building and running ----------------------------------------------------------------------------

CONFIGS = {"roformer": roformer_config, "esm": esm_config, "esm-1b": esm1b_config}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    registry = PluginRegistry(discover=False)
    registry.register(RotaryPlugin(), "rotary")
    return registry


def build(
    name: str,
    model_class: Any = None,
    *,
    dtype: torch.dtype = torch.float64,
    attn_implementation: str | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """A seeded random model of ``CONFIGS[name]`` (``AutoModel`` unless ``model_class``), perturbed so no
    norm is 1 and no bias 0, without dropout, in ``dtype`` and eval mode."""
    from transformers import AutoModel

    torch.manual_seed(0)
    config = CONFIGS[name](hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    model = AutoModel.from_config(config) if model_class is None else model_class(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.to(dtype).eval()


def batch(config: Any, *, left: bool = False, lengths: tuple[int, ...] = (11, 6, 3)) -> dict[str, torch.Tensor]:
    """Token ids (amino acids, for ESM) and a mask of rows ``lengths`` long, padded to 11 with the pad
    token, on the right unless ``left``."""
    seq_len = 11
    ids = torch.randint(4, 30, (len(lengths), seq_len), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left:
            mask[row, seq_len - length :] = 1
        else:
            mask[row, :length] = 1
    return {"input_ids": ids.masked_fill(mask == 0, int(config.pad_token_id)), "attention_mask": mask}


def convert(model: torch.nn.Module, registry: PluginRegistry) -> torch.nn.Module:
    converted = BetterTransformer.transform(model, keep_original_model=True, registry=registry)
    assert converted_layers(converted), "nothing was converted"
    return converted


def forced(strategy: str) -> Any:
    return contextlib.nullcontext() if strategy == "default" else bt_core.force_strategy(strategy)


def run(model: torch.nn.Module, inputs: dict[str, Any], strategy: str = "default") -> Any:
    with torch.inference_mode(), forced(strategy):
        return model(**inputs)


#: float64 comparisons: both sides compute the same function; only rounding differs (ESM rounds q and
#: k to float32 while rotating, ~5e-9 here).
ATOL64 = 1e-7


# -- the rotation itself -------------------------------------------------------------------------------


def test_roformer_rotary_tables_rotate_as_roformer_attention_does() -> None:
    from bt_plugins_encoders.roformer import rotary_tables
    from transformers.models.roformer.modeling_roformer import (
        RoFormerSelfAttention,
        RoFormerSinusoidalPositionalEmbedding,
    )

    from bt_core._math import rotate

    table = RoFormerSinusoidalPositionalEmbedding(16, 8)
    table.weight.data = table.create_weight()
    sinusoidal_pos = table(torch.Size((1, 16)))[None, None]  # what RoFormerEncoder hands every layer
    q, k = torch.randn(2, 2, 4, 16, 8, dtype=torch.float64).unbind(0)  # (batch, heads, seq, head_dim)
    expected_q, expected_k = RoFormerSelfAttention.apply_rotary_position_embeddings(sinusoidal_pos.double(), q, k)
    cos, sin = (t.double().squeeze(1)[:, :, None, :] for t in rotary_tables(sinusoidal_pos))  # (1, seq, 1, dim)
    for x, expected in ((q, expected_q), (k, expected_k)):
        # bt rotates in its own layout, (batch, seq, heads, head_dim)
        actual = rotate(x.transpose(1, 2), cos, sin, "interleaved").transpose(1, 2)
        assert torch.equal(actual, expected)


@pytest.mark.parametrize(
    ("name", "rotary", "fused_blocker"),
    [("roformer", "interleaved", "rotary"), ("esm", "half", "rotary"), ("esm-1b", None, None)],
)
def test_layers_declare_their_positions(
    name: str, rotary: str | None, fused_blocker: str | None, registry: PluginRegistry
) -> None:
    from bt_core._validate import kernel_blocker

    layers = converted_layers(convert(build(name, dtype=torch.float32), registry))
    assert len(layers) == 2
    for _, layer in layers:
        assert layer.rotary == rotary
        blocker = kernel_blocker(layer)
        assert (blocker is None) if fused_blocker is None else (fused_blocker in blocker)


def test_esm_layer_reads_its_shapes_from_the_attention_module(registry: PluginRegistry) -> None:
    (_, layer), _ = converted_layers(convert(build("esm"), registry))
    assert (layer.num_heads, layer.embed_dim, layer.attention_head_dim) == (4, 32, 8)
    assert layer.norm_first and layer.activation == "gelu"
    assert layer.norm1_eps == layer.norm2_eps == 1e-12


# -- parity --------------------------------------------------------------------------------------------

PADDINGS = {"right": {}, "left": {"left": True}, "none": {"lengths": (11, 11, 11)}, "short": {"lengths": (7, 5, 2)}}


@pytest.mark.parametrize("strategy", ["default", "packed", "dense"])
@pytest.mark.parametrize("padding", sorted(PADDINGS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batch_matches_original_on_real_tokens(
    name: str, padding: str, strategy: str, registry: PluginRegistry
) -> None:
    original = build(name)
    inputs = batch(original.config, **PADDINGS[padding])
    expected = run(original, inputs).last_hidden_state
    converted = convert(original, registry)
    if strategy == "packed" and padding == "none":
        strategy = "default"  # nothing to pack; forcing it runs dense
    actual = run(converted, inputs, strategy).last_hidden_state
    assert_close_on_valid(actual, expected, inputs["attention_mask"], atol=ATOL64)
    if padding == "left":  # heads that read a CLS token read position 0, a pad token here
        torch.testing.assert_close(actual[:, 0], expected[:, 0], atol=ATOL64, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float32_batch_matches_original(name: str, registry: PluginRegistry) -> None:
    original = build(name, dtype=torch.float32)
    inputs = batch(original.config)
    expected = run(original, inputs).last_hidden_state
    actual = run(convert(original, registry), inputs).last_hidden_state
    assert_close_on_valid(actual, expected, inputs["attention_mask"], atol=1e-5)


def test_forcing_the_fused_kernel_on_a_rotary_layer_is_refused_naming_the_rotation(registry: PluginRegistry) -> None:
    converted = convert(build("roformer", dtype=torch.float32), registry)
    with pytest.raises(bt_core.BetterTransformerError, match="rotary positions"):
        run(converted, batch(converted.config), "fused")


def test_esm_1b_runs_the_fused_kernel_exactly(registry: PluginRegistry) -> None:
    original = build("esm-1b", dtype=torch.float32)
    inputs = batch(original.config)
    expected = run(original, inputs).last_hidden_state
    actual = run(convert(original, registry), inputs, "fused").last_hidden_state
    assert_close_on_valid(actual, expected, inputs["attention_mask"], atol=1e-5)


def test_esm_rotates_by_the_position_ids_given(registry: PluginRegistry) -> None:
    original = build("esm")
    inputs = batch(original.config)
    # Rotary positions come from position_ids when given, one row per sequence: a per-row table. (A
    # shift alone would change nothing: rotary scores depend on distances, so each row gets a stride.)
    inputs["position_ids"] = torch.arange(11).expand(3, 11) * torch.tensor([[1], [2], [3]])
    expected = run(original, inputs).last_hidden_state
    default = run(original, {k: v for k, v in inputs.items() if k != "position_ids"}).last_hidden_state
    assert (expected - default).abs().max() > 1e-3  # the positions do change the output
    converted = convert(original, registry)
    for strategy in ("default", "dense"):
        actual = run(converted, inputs, strategy).last_hidden_state
        assert_close_on_valid(actual, expected, inputs["attention_mask"], atol=ATOL64)


def test_roformer_with_a_smaller_embedding_size_matches(registry: PluginRegistry) -> None:
    # embedding_size != hidden_size adds a projection before the encoder; the layers are unchanged.
    original = build("roformer", embedding_size=16)
    inputs = batch(original.config)
    expected = run(original, inputs).last_hidden_state
    actual = run(convert(original, registry), inputs).last_hidden_state
    assert_close_on_valid(actual, expected, inputs["attention_mask"], atol=ATOL64)


# -- task heads -----------------------------------------------------------------------------------------

HEADS = ["ForMaskedLM", "ForSequenceClassification", "ForTokenClassification"]
_PREFIX = {"roformer": "RoFormer", "esm": "Esm", "esm-1b": "Esm"}


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_task_head_logits_match_original(name: str, head: str, left: bool, registry: PluginRegistry) -> None:
    import transformers

    original = build(name, getattr(transformers, _PREFIX[name] + head), num_labels=3)
    inputs = batch(original.config, left=left)
    if name == "esm":  # mask some tokens: token dropout rescales the embeddings, outside the layers
        inputs["input_ids"][0, 2:4] = int(original.config.mask_token_id)
    expected = run(original, inputs).logits
    actual = run(convert(original, registry), inputs).logits
    if head == "ForSequenceClassification":  # reads position 0, a pad token in left-padded rows
        assert actual.shape == expected.shape == (3, 3)
        torch.testing.assert_close(actual, expected, atol=ATOL64, rtol=0)
    else:
        assert_close_on_valid(actual, expected, inputs["attention_mask"], atol=ATOL64)


# -- what the model records ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_requested_hidden_states_match(name: str, registry: PluginRegistry) -> None:
    original = build(name)
    inputs = {**batch(original.config), "output_hidden_states": True}
    expected = run(original, inputs)
    actual = run(convert(original, registry), inputs)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    for got, want in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert_close_on_valid(got, want, inputs["attention_mask"], atol=1e-6)
    assert_close_on_valid(actual.last_hidden_state, expected.last_hidden_state, inputs["attention_mask"], atol=1e-6)


def test_roformer_requested_attentions_match(registry: PluginRegistry) -> None:
    original = build("roformer")
    inputs = {**batch(original.config), "output_attentions": True}
    expected = run(original, inputs)
    actual = run(convert(original, registry), inputs)
    assert len(actual.attentions) == len(expected.attentions) == 2
    for got, want in zip(actual.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["esm", "esm-1b"])
def test_esm_requested_attentions_match(name: str, registry: PluginRegistry) -> None:
    original = build(name, attn_implementation="eager")
    inputs = {**batch(original.config), "output_attentions": True}
    expected = run(original, inputs)
    actual = run(convert(original, registry), inputs)
    assert len(actual.attentions) == len(expected.attentions) == 2
    for got, want in zip(actual.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_esm_contact_prediction_matches(registry: PluginRegistry) -> None:
    # predict_contacts reads every layer's attention probabilities (the reference path computes them).
    from transformers import EsmForMaskedLM

    original = build("esm", EsmForMaskedLM, attn_implementation="eager")
    inputs = batch(original.config, lengths=(11, 11, 11))
    with torch.inference_mode():
        expected = original.predict_contacts(inputs["input_ids"], inputs["attention_mask"])
        actual = convert(original, registry).predict_contacts(inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


# -- refusals -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def refused_untouched(model: torch.nn.Module, match: str) -> Iterator[None]:
    """The conversion inside raises ``match`` and leaves ``model`` exactly as it was."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=match):
        yield
    assert not converted_layers(model)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_roformer_rotating_values_is_refused(registry: PluginRegistry) -> None:
    model = build("roformer", rotary_value=True)
    expected = r"RoFormerLayer \(RoFormerConfig\): rotary_value=True rotates the attention values.*unconverted"
    with refused_untouched(model, expected):
        BetterTransformer.transform(model, registry=registry)


def test_roformer_rotary_value_set_on_the_module_is_refused(registry: PluginRegistry) -> None:
    model = build("roformer")
    model.encoder.layer[1].attention.self.rotary_value = True  # what the forward reads, whatever the config says
    with refused_untouched(model, r"rotary_value=True"):
        BetterTransformer.transform(model, registry=registry)


@pytest.mark.parametrize("value", ["relative_key", "relative_key_query"])
def test_esm_relative_position_attention_is_refused(value: str, registry: PluginRegistry) -> None:
    model = build("esm", position_embedding_type=value)
    expected = (
        rf"EsmLayer \(EsmConfig\): position_embedding_type='{value}' asks for relative-position attention"
        r".*unconverted"
    )
    with refused_untouched(model, expected):
        BetterTransformer.transform(model, registry=registry)


def test_esm_unknown_position_type_is_refused(registry: PluginRegistry) -> None:
    model = build("esm")
    model.encoder.layer[0].attention.self.position_embedding_type = "alibi"
    with refused_untouched(model, r"position_embedding_type='alibi' is not one bt-plugins-encoders knows"):
        BetterTransformer.transform(model, registry=registry)


@pytest.mark.parametrize("name", ["roformer", "esm"])
def test_decoder_config_is_refused(name: str, registry: PluginRegistry) -> None:
    model = build(name, is_decoder=True)
    with refused_untouched(model, r"is_decoder=True .*causal.*is_decoder=False"):
        BetterTransformer.transform(model, registry=registry)


@pytest.mark.parametrize("name", ["roformer", "esm"])
def test_cross_attention_config_is_refused(name: str, registry: PluginRegistry) -> None:
    model = build(name, is_decoder=True, add_cross_attention=True)
    with refused_untouched(model, r"add_cross_attention=True .*cross-attention"):
        BetterTransformer.transform(model, registry=registry)


def test_rotary_esm_layer_called_without_positions_says_so(registry: PluginRegistry) -> None:
    converted = convert(build("esm", dtype=torch.float32), registry)
    hidden = torch.randn(2, 5, 32)
    with torch.inference_mode(), pytest.raises(UnsupportedModelError, match="without position_embeddings"):
        converted.encoder.layer[0](hidden)


def test_roformer_layer_called_with_a_cache_is_refused(registry: PluginRegistry) -> None:
    from transformers import DynamicCache

    converted = convert(build("roformer", dtype=torch.float32), registry)
    hidden = torch.randn(2, 5, 32)
    with torch.inference_mode(), pytest.raises(UnsupportedModelError, match="key/value cache"):
        converted.encoder.layer[0](hidden, None, None, None, None, DynamicCache())


# -- training and reverse -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_step_then_reverse_carries_the_trained_weights(name: str, registry: PluginRegistry) -> None:
    original = build(name)
    inputs = batch(original.config)
    converted = BetterTransformer.transform(build(name), registry=registry).train()
    optimizer_original = torch.optim.SGD(original.train().parameters(), lr=0.1)
    optimizer_converted = torch.optim.SGD(converted.parameters(), lr=0.1)
    for model, optimizer in ((original, optimizer_original), (converted, optimizer_converted)):
        hidden = model(**inputs).last_hidden_state
        (hidden * inputs["attention_mask"][..., None]).pow(2).sum().backward()
        optimizer.step()
    restored = BetterTransformer.reverse(converted).eval()
    for key, value in original.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, atol=1e-6, rtol=0)

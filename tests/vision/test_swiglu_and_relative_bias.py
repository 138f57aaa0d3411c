"""DINOv2's SwiGLU feed-forward and BEiT/data2vec-vision's relative position bias (per layer, shared by
the encoder, or both) convert exactly: under every strategy, with the task head, in training, through
``reverse``; the fused kernel never runs them, and the bias keeps training as a parameter of the model.

Pixel models have no padding, so every batch here is unpadded; the conformance kit runs over the same
variants at the end of the file (float64 parity, gradients of every fused parameter, hidden states).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bt_plugins_vision.plugin as vision_plugin
import pytest
import torch
from torch import nn

from bt_core import (
    PLUGIN_API_VERSION,
    BetterTransformer,
    BetterTransformerError,
    LayerMapping,
    force_strategy,
    hookimpl,
)
from bt_core.layer import FUSED_PARAMETERS
from bt_core.testing import AdapterConformance

from .conftest import (
    BATCH,
    assert_close,
    build,
    clone_state,
    convert,
    converted_layers,
    pixel_inputs,
    run,
    state_dicts_identical,
)


@dataclass(frozen=True)
class Variant:
    """A configuration the vision pack used to refuse: its config, base model, head, and layer class."""

    name: str
    config: Callable[[], Any]
    model: str
    head: str
    layer_class: str
    adapter: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return self.config().model_type

    @property
    def has_relative_bias(self) -> bool:
        return any(self.overrides.get(f) for f in ("use_relative_position_bias", "use_shared_relative_position_bias"))

    def build(self, model: str | None = None, **overrides: Any) -> nn.Module:
        """A tiny model whose relative position bias tables are of order one, far from their zero
        initialisation, so that a bias dropped or misplaced shows far beyond the tolerance."""
        built = build(self.config, model or self.model, **{**self.overrides, **overrides})
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, param in built.named_parameters():
                if name.endswith("relative_position_bias_table"):
                    param.copy_(torch.randn(param.shape, generator=generator))
        return built

    def config_with_overrides(self) -> Any:
        config = self.config()
        for key, value in self.overrides.items():
            setattr(config, key, value)
        return config


def _beit(name: str, **overrides: Any) -> Variant:
    return Variant(
        name,
        vision_plugin.beit_config,
        "BeitModel",
        "BeitForImageClassification",
        "BeitLayer",
        "bt_plugins_vision.beit:BeitLayerAdapter",
        overrides,
    )


def _data2vec(name: str, **overrides: Any) -> Variant:
    return Variant(
        name,
        vision_plugin.data2vec_vision_config,
        "Data2VecVisionModel",
        "Data2VecVisionForImageClassification",
        "Data2VecVisionLayer",
        "bt_plugins_vision.beit:Data2VecVisionLayerAdapter",
        overrides,
    )


VARIANTS: list[Variant] = [
    Variant(
        "dinov2_swiglu",
        vision_plugin.dinov2_config,
        "Dinov2Model",
        "Dinov2ForImageClassification",
        "Dinov2Layer",
        "Dinov2LayerAdapter",
        {"use_swiglu_ffn": True},
    ),
    _beit("beit_layer_bias", use_relative_position_bias=True),
    _beit("beit_shared_bias", use_shared_relative_position_bias=True),
    _beit("beit_both_biases", use_relative_position_bias=True, use_shared_relative_position_bias=True),
    _data2vec("data2vec_layer_bias", use_relative_position_bias=True),
    _data2vec("data2vec_shared_bias", use_shared_relative_position_bias=True),
    _data2vec("data2vec_both_biases", use_relative_position_bias=True, use_shared_relative_position_bias=True),
]
BIASED = [v for v in VARIANTS if v.has_relative_bias]


def _clear_relative_position_index_caches() -> None:
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias
    from transformers.models.data2vec.modeling_data2vec_vision import Data2VecVisionRelativePositionBias

    for owner in (BeitRelativePositionBias, Data2VecVisionRelativePositionBias):
        for cell in owner.generate_relative_position_index.__closure__ or ():
            if hasattr(cell.cell_contents, "cache_clear"):
                cell.cell_contents.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_relative_position_index() -> Iterator[None]:
    """transformers caches the relative position index of each resolution in one lru_cache per class
    (shared by every model, exposed by no API). Made under ``torch.inference_mode()``, it is an
    inference tensor, and a later training forward of any model with a relative position bias, the
    original as much as the converted, fails saving it for backward. So no test inherits the cache."""
    _clear_relative_position_index_caches()
    yield
    _clear_relative_position_index_caches()


def _by_name(variants: list[Variant]) -> Any:
    return pytest.mark.parametrize("variant", variants, ids=[v.name for v in variants])


def _bias_tables(model: nn.Module) -> list[nn.Parameter]:
    """Every relative position bias table the model trains, in module order (shared first, then per layer)."""
    return [m.relative_position_bias_table for m in model.modules() if hasattr(m, "relative_position_bias_table")]


# -- what is declared ------------------------------------------------------------------------------


def test_dinov2_swiglu_is_declared_as_a_gated_silu_feed_forward_with_the_gate_first() -> None:
    model = VARIANTS[0].build()
    convert(model)
    for layer in converted_layers(model):
        mlp = layer.original_layer.mlp
        hidden = (mlp.down_proj if hasattr(mlp, "down_proj") else mlp.weights_out).in_features
        assert (layer.activation, layer.gated_half) == ("silu", "first")
        assert layer.linear1_weight.shape == (2 * hidden, layer.embed_dim)


@_by_name([v for v in BIASED if "layer" in v.name])
def test_beit_like_branches_drop_out_with_the_hidden_rate_and_probabilities_with_the_attention_rate(
    variant: Variant,
) -> None:
    """data2vec-vision's self-attention holds the probabilities' nn.Dropout, found before the branches' ones."""
    model = convert(variant.build(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.3))
    for layer in converted_layers(model):
        assert layer.attention_dropout == 0.3
        assert layer.branch_dropout("attention") == layer.branch_dropout("feed_forward") == 0.1


@_by_name(VARIANTS)
def test_the_fused_kernel_is_never_forced_onto_these_layers(variant: Variant) -> None:
    model = convert(variant.build())
    reason = "score bias" if variant.has_relative_bias else "activation .silu."
    with force_strategy("fused"), pytest.raises(BetterTransformerError, match=reason):
        run(model, pixel_inputs(model))


@_by_name(BIASED)
def test_the_relative_bias_changes_the_output_so_parity_is_not_vacuous(variant: Variant) -> None:
    model = variant.build()
    inputs = pixel_inputs(model)
    with_bias = run(model, inputs).last_hidden_state
    with torch.no_grad():
        for table in _bias_tables(model):
            table.zero_()
    assert (run(model, inputs).last_hidden_state - with_bias).abs().max() > 1e-2


# -- inference -------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [None, "packed", "dense", "reference"])
@_by_name(VARIANTS)
def test_unpadded_batch_matches_original_under_every_strategy(variant: Variant, strategy: str | None) -> None:
    model = variant.build()
    inputs = pixel_inputs(model)
    expected = run(model, inputs)
    convert(model)
    with force_strategy(strategy):
        actual = run(model, inputs)
    assert len(converted_layers(model)) == model.config.num_hidden_layers
    assert_close(actual.last_hidden_state, expected.last_hidden_state)
    if getattr(expected, "pooler_output", None) is not None:
        assert_close(actual.pooler_output, expected.pooler_output)


@_by_name(VARIANTS)
def test_image_classification_head_matches_original(variant: Variant) -> None:
    model = variant.build(variant.head, num_labels=3)
    inputs = pixel_inputs(model)
    expected = run(model, inputs).logits
    convert(model)
    assert_close(run(model, inputs).logits, expected)


@_by_name(BIASED)
def test_larger_images_with_interpolated_positions_match_original(variant: Variant) -> None:
    """The bias is computed for the call's resolution and interpolated as the original does."""
    model = variant.build()
    inputs = {"pixel_values": torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(5))}
    inputs["interpolate_pos_encoding"] = True
    expected = run(model, inputs).last_hidden_state
    convert(model)
    assert_close(run(model, inputs).last_hidden_state, expected)


@_by_name([v for v in BIASED if v.model == "BeitModel"])
def test_beit_token_mask_is_added_with_the_bias_as_the_original_adds_it(variant: Variant) -> None:
    model = variant.build()
    inputs = pixel_inputs(model)
    seq_len = run(model, inputs).last_hidden_state.shape[1]
    mask = torch.ones(BATCH, seq_len, dtype=torch.long)
    mask[1, seq_len // 2 :] = 0
    inputs["attention_mask"] = mask
    expected = run(model, inputs).last_hidden_state
    convert(model)
    assert_close(run(model, inputs).last_hidden_state, expected, mask.bool())


@_by_name(VARIANTS)
def test_requested_hidden_states_and_attentions_match_original(variant: Variant) -> None:
    model = variant.build(_attn_implementation="eager")  # sdpa returns no attentions to compare
    inputs = {**pixel_inputs(model), "output_hidden_states": True, "output_attentions": True}
    expected = run(model, inputs)
    convert(model)
    actual = run(model, inputs)
    for a, e in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert_close(a, e)
    assert len(actual.attentions) == len(expected.attentions) == model.config.num_hidden_layers
    for a, e in zip(actual.attentions, expected.attentions, strict=True):
        assert_close(a, e)


def test_a_layer_with_its_own_bias_called_without_resolution_names_the_missing_argument() -> None:
    model = convert(_beit("beit", use_relative_position_bias=True).build())
    layer = converted_layers(model)[0]
    with pytest.raises(ValueError, match=r"needs `resolution`.*resolution=pixel_values\.shape\[2:\]"):
        layer(torch.zeros(1, 17, 32))


# -- training --------------------------------------------------------------------------------------


@_by_name(VARIANTS)
def test_training_gradients_match_original_and_reach_every_parameter(variant: Variant) -> None:
    original, converted = variant.build().train(), convert(variant.build()).train()
    inputs = pixel_inputs(original)
    pixels = inputs.pop("pixel_values")

    def forward(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.clone().requires_grad_(True)
        torch.manual_seed(0)
        out = model(pixel_values=x, **inputs).last_hidden_state
        out.pow(2).mean().backward()
        return out.detach(), x.grad

    expected, expected_grad = forward(original)
    actual, actual_grad = forward(converted)

    assert_close(actual, expected)
    torch.testing.assert_close(actual_grad, expected_grad, atol=1e-6, rtol=1e-4)
    tables = list(zip(_bias_tables(converted), _bias_tables(original), strict=True))
    assert bool(tables) == variant.has_relative_bias
    for mine, theirs in tables:
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-6, rtol=1e-4)
    for layer in converted_layers(converted):
        for name in FUSED_PARAMETERS:
            param = getattr(layer, name)
            if param is not None and param.requires_grad:
                assert param.grad is not None and torch.isfinite(param.grad).all(), f"{name} got no gradient"


@_by_name(VARIANTS)
def test_a_training_step_carries_over_through_reverse(variant: Variant) -> None:
    model = convert(variant.build()).train()
    inputs = pixel_inputs(model)
    tables_before = [t.detach().clone() for t in _bias_tables(model)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(0)
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    optimizer.step()
    model.eval()
    trained = run(model, inputs).last_hidden_state

    BetterTransformer.reverse(model)

    assert_close(run(model, inputs).last_hidden_state, trained)
    for before, after in zip(tables_before, _bias_tables(model), strict=True):
        assert not torch.equal(before, after), "the relative position bias did not train"


# -- reverse and memory ----------------------------------------------------------------------------


@_by_name(VARIANTS)
def test_reverse_restores_bit_identical_state_dict(variant: Variant) -> None:
    model = variant.build()
    inputs = pixel_inputs(model)
    before = clone_state(model)
    expected = run(model, inputs).last_hidden_state

    BetterTransformer.reverse(convert(model))

    assert not converted_layers(model)
    state_dicts_identical(before, model.state_dict())
    assert torch.equal(run(model, inputs).last_hidden_state, expected)


@_by_name(VARIANTS)
def test_conversion_adds_no_parameters_and_keeps_every_bias_table(variant: Variant) -> None:
    model = variant.build()
    count, tables = sum(p.numel() for p in model.parameters()), _bias_tables(model)
    convert(model)
    assert sum(p.numel() for p in model.parameters()) <= count
    kept = {id(p) for p in model.parameters()}
    assert all(id(table) in kept for table in tables)


# -- the conformance kit, over each variant --------------------------------------------------------


class _VariantPlugin:
    """A plugin mapping one variant's layer to the vision pack's adapter, with the variant as its example."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant

    @hookimpl
    def bt_plugin_api_version(self) -> str:
        return PLUGIN_API_VERSION

    @hookimpl
    def bt_register_layers(self) -> list[LayerMapping]:
        v = self.variant
        adapter = v.adapter if ":" in v.adapter else f"bt_plugins_vision.adapters:{v.adapter}"
        return [LayerMapping(v.model_type, v.layer_class, adapter, v.config_with_overrides)]


class TestDinov2SwigluConformance(AdapterConformance):
    plugin = _VariantPlugin(VARIANTS[0])


class TestBeitLayerBiasConformance(AdapterConformance):
    plugin = _VariantPlugin(VARIANTS[1])


class TestBeitSharedBiasConformance(AdapterConformance):
    plugin = _VariantPlugin(VARIANTS[2])


class TestData2VecVisionLayerBiasConformance(AdapterConformance):
    plugin = _VariantPlugin(VARIANTS[4])


class TestData2VecVisionSharedBiasConformance(AdapterConformance):
    plugin = _VariantPlugin(VARIANTS[5])

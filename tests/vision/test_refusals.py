"""What the vision pack refuses, and that each refusal names the field, its value and the way out,
leaving the model exactly as it was."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import bt_plugins_vision.plugin as vision_plugin
import pytest
import torch
from bt_plugins_vision.adapters import ViTLayerAdapter, find_submodule
from torch import nn

from bt_core import BetterTransformer, BetterTransformerBaseLayer, UnsupportedModelError

from .conftest import (
    assert_close,
    build,
    clone_state,
    convert,
    converted_layers,
    pixel_inputs,
    run,
    state_dicts_identical,
)


def _refused(model: nn.Module, match: str) -> None:
    before = clone_state(model)
    with pytest.raises(UnsupportedModelError, match=match):
        BetterTransformer.transform(model)
    assert not converted_layers(model)
    state_dicts_identical(before, model.state_dict())


@pytest.mark.parametrize("model_class", ["BeitModel", "Data2VecVisionModel"])
def test_layer_scale_off_converts_without_folding(model_class: str) -> None:
    config = vision_plugin.beit_config if model_class == "BeitModel" else vision_plugin.data2vec_vision_config
    model = build(config, model_class, layer_scale_init_value=0.0)
    inputs = pixel_inputs(model)
    expected = run(model, inputs).last_hidden_state
    convert(model)
    assert_close(run(model, inputs).last_hidden_state, expected)


def test_stochastic_depth_converts_for_inference_and_drops_branches_in_training() -> None:
    model = build(vision_plugin.beit_config, "BeitModel", drop_path_rate=0.2)
    inputs = pixel_inputs(model)
    expected = run(model, inputs).last_hidden_state
    convert(model)
    assert_close(run(model, inputs).last_hidden_state, expected)
    layers = [m for m in model.modules() if isinstance(m, BetterTransformerBaseLayer)]
    assert max(layer.drop_path for layer in layers) > 0

    model.train()
    out = model(**inputs).last_hidden_state
    out.sum().backward()
    assert torch.isfinite(out).all() and layers[0].in_proj_weight.grad is not None


def test_swin_is_refused_with_the_reason() -> None:
    import transformers

    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1], num_heads=[2], window_size=4
    )
    model = transformers.SwinModel(config).eval()
    with pytest.raises(UnsupportedModelError, match=r"'swin' cannot be converted exactly: .*shifted local windows"):
        BetterTransformer.transform(model)


def test_unknown_weight_layout_names_the_layer_and_every_name_tried() -> None:
    layer = nn.Module()
    layer.attention = nn.Module()
    with pytest.raises(
        UnsupportedModelError,
        match=r"Module: cannot find its query projection; tried "
        r"'attention\.q_proj', 'attention\.attention\.query'.*children are: attention",
    ):
        find_submodule(layer, ViTLayerAdapter.Q, "query projection")


def test_a_layer_renamed_by_transformers_fails_without_touching_the_model() -> None:
    model = build(vision_plugin.vit_config, "ViTModel")
    layer: Any = model.layers[1]
    layer.mlp.dense_in = layer.mlp.fc1  # what a future rename would look like
    del layer.mlp.fc1
    before = clone_state(model)
    with pytest.raises(
        UnsupportedModelError, match=r"ViTLayer: cannot find its first feed-forward linear; tried 'mlp\.fc1'"
    ):
        BetterTransformer.transform(model)
    assert not converted_layers(model)
    state_dicts_identical(before, model.state_dict())


def test_a_non_string_activation_is_refused() -> None:
    """transformers' typed configs reject callables today; older custom configs carried them."""
    model = build(vision_plugin.vit_config, "ViTModel")
    custom = SimpleNamespace(hidden_act=torch.nn.functional.gelu, num_attention_heads=4)
    for layer in model.layers:
        layer.mlp.config = custom
        layer.attention.config = custom
    _refused(model, r"hidden_act is .*not the name of an activation")

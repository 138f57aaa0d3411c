"""A module bt does not know in a linear's place is refused by class and path, before any swap.

bt computes plain ``nn.Linear``, PEFT adapter layers and dynamically quantized Linear exactly. Anything
else standing where a linear stands (a Linear subclass with its own forward), and any wrapper that an
adapter written for plugin API 1.0 reads through ``.weight``, would silently lose what it adds.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from bt_core import BetterTransformer, BetterTransformerBaseLayer, LayerMapping, UnsupportedModelError, hookimpl
from bt_core.registry import PluginRegistry

from .conftest import assert_state_dict_identical, batch, build_bert, run, snapshot


class ScaledLinear(nn.Linear):
    """A home-made wrapper: a Linear that doubles its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_an_unknown_linear_subclass_is_refused_by_class_and_path_and_the_model_is_unchanged() -> None:
    model = build_bert()
    old = model.encoder.layer[1].attention.self.query
    wrapped = ScaledLinear(old.in_features, old.out_features)
    wrapped.load_state_dict(old.state_dict())
    model.encoder.layer[1].attention.self.query = wrapped
    inputs = batch(model.config)
    before, expected = snapshot(model), run(model, inputs)
    with pytest.raises(UnsupportedModelError, match=r"encoder\.layer\.1\.attention\.self\.query is a .*ScaledLinear"):
        BetterTransformer.transform(model)
    assert not BetterTransformer.is_converted(model)
    assert_state_dict_identical(model, before)
    torch.testing.assert_close(run(model, inputs).last_hidden_state, expected.last_hidden_state, atol=0, rtol=0)


class Api10BertAdapter(BetterTransformerBaseLayer):
    """An adapter written for plugin API 1.0: it reads and fuses weights by hand."""

    def __init__(self, layer: nn.Module, config: object) -> None:
        super().__init__(layer, config)
        attention, output = layer.attention, layer.output
        q, k, v = attention.self.query, attention.self.key, attention.self.value
        self.in_proj_weight = self.fuse(q.weight, k.weight, v.weight)
        self.in_proj_bias = self.fuse(q.bias, k.bias, v.bias)
        self.out_proj_weight, self.out_proj_bias = attention.output.dense.weight, attention.output.dense.bias
        self.linear1_weight, self.linear1_bias = layer.intermediate.dense.weight, layer.intermediate.dense.bias
        self.linear2_weight, self.linear2_bias = output.dense.weight, output.dense.bias
        self.norm1_weight, self.norm1_bias = attention.output.LayerNorm.weight, attention.output.LayerNorm.bias
        self.norm2_weight, self.norm2_bias = output.LayerNorm.weight, output.LayerNorm.bias
        self.norm1_eps = self.norm2_eps = config.layer_norm_eps  # type: ignore[attr-defined]
        self.num_heads = config.num_attention_heads  # type: ignore[attr-defined]
        self.embed_dim = config.hidden_size  # type: ignore[attr-defined]
        self.activation = config.hidden_act  # type: ignore[attr-defined]


def test_a_lora_layer_read_by_a_1_0_adapter_is_refused_instead_of_dropped() -> None:
    plugin = type("Api10Plugin", (), {})()
    plugin.bt_plugin_api_version = hookimpl(lambda: "1.0")
    plugin.bt_register_layers = hookimpl(lambda: [LayerMapping("bert", "BertLayer", Api10BertAdapter)])
    registry = PluginRegistry(discover=False)
    registry.register(plugin, "api10")
    model = get_peft_model(build_bert(), LoraConfig(target_modules=["query", "value"], init_lora_weights=False))
    inputs = batch(model.config)
    before, expected = snapshot(model), run(model, inputs)
    with pytest.raises(UnsupportedModelError, match=r"attention\.self\.query is a peft\..*reads as a plain linear"):
        BetterTransformer.transform(model, registry=registry)
    assert not BetterTransformer.is_converted(model)
    assert_state_dict_identical(model, before)
    torch.testing.assert_close(run(model, inputs).last_hidden_state, expected.last_hidden_state, atol=0, rtol=0)

"""A BERT adapter written the way plugins built for plugin API 1.0 write them: weights read and fused by
hand. Used to check that such plugins keep converting, and that bt refuses what they would get wrong."""

from __future__ import annotations

import types
from typing import Any

from torch import nn

from bt_core import BetterTransformerBaseLayer, LayerMapping, hookimpl


class Api10BertAdapter(BetterTransformerBaseLayer):
    def __init__(self, layer: nn.Module, config: Any) -> None:
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
        self.norm1_eps = self.norm2_eps = config.layer_norm_eps
        self.num_heads, self.embed_dim = config.num_attention_heads, config.hidden_size
        self.activation = config.hidden_act


def api_1_0_plugin() -> types.ModuleType:
    """A plugin module declaring plugin API 1.0 and mapping BERT to :class:`Api10BertAdapter`."""
    module = types.ModuleType("api_1_0_plugin")
    module.bt_plugin_api_version = hookimpl(lambda: "1.0")
    module.bt_register_layers = hookimpl(lambda: [LayerMapping("bert", "BertLayer", Api10BertAdapter)])
    return module

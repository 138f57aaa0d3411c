"""Adapters for BERT-family encoder layers."""

from __future__ import annotations

from typing import Any

from torch import nn

from bt_core import BetterTransformerBaseLayer


class BertLayerAdapter(BetterTransformerBaseLayer):
    """``BertLayer`` and its many copies: post-norm, q/k/v linears, ``intermediate``/``output``."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        attention = layer.attention
        q, k, v = attention.self.query, attention.self.key, attention.self.value
        self.in_proj_weight = self.fuse(q.weight, k.weight, v.weight)
        self.in_proj_bias = self.fuse(q.bias, k.bias, v.bias)
        self.out_proj_weight = attention.output.dense.weight
        self.out_proj_bias = attention.output.dense.bias
        self.linear1_weight = layer.intermediate.dense.weight
        self.linear1_bias = layer.intermediate.dense.bias
        self.linear2_weight = layer.output.dense.weight
        self.linear2_bias = layer.output.dense.bias
        self.norm1_weight = attention.output.LayerNorm.weight
        self.norm1_bias = attention.output.LayerNorm.bias
        self.norm1_eps = attention.output.LayerNorm.eps
        self.norm2_weight = layer.output.LayerNorm.weight
        self.norm2_bias = layer.output.LayerNorm.bias
        self.norm2_eps = layer.output.LayerNorm.eps
        self.num_heads = config.num_attention_heads
        self.embed_dim = config.hidden_size
        self.activation = config.hidden_act
        self.attention_dropout = config.attention_probs_dropout_prob
        self.hidden_dropout = config.hidden_dropout_prob

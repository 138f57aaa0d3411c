"""The adapter: ACME's encoder layer, expressed as bt's fused encoder layer."""

from __future__ import annotations

from typing import Any

from torch import nn

from bt_core import BetterTransformerBaseLayer


class AcmeEncoderLayerAdapter(BetterTransformerBaseLayer):
    """``AcmeEncoderLayer``: pre-norm, separate q/k/v projections, no key bias."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        attention = layer.attention
        # q, k, v packed into one projection; the key projection has no bias, so it gets zeros.
        self.in_proj_weight = self.fuse(attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)
        self.in_proj_bias = self.fuse(
            attention.q_proj.bias,
            self.zeros(config.hidden_size, like=attention.q_proj.bias),
            attention.v_proj.bias,
        )
        # Parameters the kernel takes as they are: shared with the original layer, not copied.
        self.out_proj_weight = attention.out_proj.weight
        self.out_proj_bias = attention.out_proj.bias
        self.linear1_weight = layer.ffn.up.weight
        self.linear1_bias = layer.ffn.up.bias
        self.linear2_weight = layer.ffn.down.weight
        self.linear2_bias = layer.ffn.down.bias
        # norm1 is the norm of the attention block, norm2 the one of the feed-forward block.
        self.norm1_weight = layer.attention_norm.weight
        self.norm1_bias = layer.attention_norm.bias
        self.norm1_eps = layer.attention_norm.eps
        self.norm2_weight = layer.ffn_norm.weight
        self.norm2_bias = layer.ffn_norm.bias
        self.norm2_eps = layer.ffn_norm.eps
        self.num_heads = config.num_heads
        self.embed_dim = config.hidden_size
        self.activation = config.activation
        self.norm_first = True  # pre-norm
        self.attention_dropout = config.attention_dropout
        self.hidden_dropout = config.dropout

"""A tiny transformers model defined here, so bt-core's own tests need no plugin pack.

``ToyLayer`` is a classic encoder layer (q/k/v/o projections, two-layer feed-forward, two layer
norms, post-norm or pre-norm); ``ToyAdapter`` maps it onto the fused attributes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput

import bt_core
from bt_core import BetterTransformerBaseLayer, LayerMapping


class ToyConfig(PretrainedConfig):
    model_type = "bt-toy"

    def __init__(
        self,
        hidden_size: int = 32,
        num_attention_heads: int = 4,
        intermediate_size: int = 64,
        num_hidden_layers: int = 3,
        vocab_size: int = 50,
        hidden_act: str = "gelu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.vocab_size = vocab_size
        self.hidden_act = hidden_act
        self.norm_first = norm_first
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout


class ToyLayer(nn.Module):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        size = config.hidden_size
        self.heads = config.num_attention_heads
        self.q, self.k, self.v, self.o = (nn.Linear(size, size) for _ in range(4))
        self.ffn_in = nn.Linear(size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, size)
        self.norm1 = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.norm_first = config.norm_first
        self.dropout = nn.Dropout(config.dropout)

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, size = x.shape
        split = lambda t: t.view(batch, length, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores + mask
        probs = self.dropout(scores.softmax(-1))
        return self.dropout(self.o((probs @ v).transpose(1, 2).reshape(batch, length, size)))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = hidden_states
        if self.norm_first:
            x = x + self.attend(self.norm1(x), attention_mask)
            return x + self.dropout(self.ffn_out(self.act(self.ffn_in(self.norm2(x)))))
        x = self.norm1(x + self.attend(x, attention_mask))
        return self.norm2(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


class ToyModel(PreTrainedModel):
    config_class = ToyConfig
    base_model_prefix = "toy"
    supports_gradient_checkpointing = True

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(ToyLayer(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BaseModelOutput:
        hidden = self.embeddings(input_ids)
        additive = None
        if attention_mask is not None:  # the additive 0 / dtype-min form transformers' eager models use
            additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            hidden = layer(hidden, additive)
        return BaseModelOutput(last_hidden_state=hidden)


class ToyAdapter(BetterTransformerBaseLayer):
    def __init__(self, layer: ToyLayer, config: ToyConfig) -> None:
        super().__init__(layer, config)
        self.in_proj_weight = self.fuse(layer.q.weight, layer.k.weight, layer.v.weight)
        self.in_proj_bias = self.fuse(layer.q.bias, layer.k.bias, layer.v.bias)
        self.out_proj_weight, self.out_proj_bias = layer.o.weight, layer.o.bias
        self.linear1_weight, self.linear1_bias = layer.ffn_in.weight, layer.ffn_in.bias
        self.linear2_weight, self.linear2_bias = layer.ffn_out.weight, layer.ffn_out.bias
        self.norm1_weight, self.norm1_bias, self.norm1_eps = layer.norm1.weight, layer.norm1.bias, layer.norm1.eps
        self.norm2_weight, self.norm2_bias, self.norm2_eps = layer.norm2.weight, layer.norm2.bias, layer.norm2.eps
        self.num_heads = config.num_attention_heads
        self.embed_dim = config.hidden_size
        self.activation = config.hidden_act
        self.norm_first = config.norm_first
        self.attention_dropout = self.hidden_dropout = config.dropout


class ToyPlugin:
    """An in-process plugin converting ``bt-toy`` models."""

    @bt_core.hookimpl
    def bt_plugin_api_version(self) -> str:
        return bt_core.PLUGIN_API_VERSION

    @bt_core.hookimpl
    def bt_register_layers(self) -> list[LayerMapping]:
        return [LayerMapping("bt-toy", "ToyLayer", ToyAdapter, example_config=ToyConfig, example_model_class=ToyModel)]

    @bt_core.hookimpl
    def bt_refused_model_types(self) -> dict[str, str]:
        return {"bt-toy-rotary": "its attention applies rotary position embeddings, which the fused kernel lacks"}

"""ProphetNet's encoder layer (``ProphetNetEncoderLayer``): BART's post-norm arithmetic.

The encoder adds no position bias to the scores (learned absolute positions go in with the
embeddings; the relative buckets and n-gram streams are the decoder's, which stays the model's own).
It hands each layer a 4-D additive mask (one copy per head), ``output_attentions`` as a keyword,
indexes a tuple back and records hidden states itself between layers. The same in transformers 5.10
and 5.24.

Its attention returns the *scores* (``q.k / sqrt(d) + mask``, before the softmax) as its attentions,
not the probabilities; when they are asked for, the adapter computes those scores from the same
projections.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, PackedTokens
from bt_core.layer import LayerCall, check_activation

__all__ = ["ProphetNetEncoderLayerAdapter"]


class ProphetNetEncoderLayerAdapter(BetterTransformerBaseLayer):
    """``ProphetNetEncoderLayer``: post-norm; ``self_attn.{query,key,value}_proj``, ``self_attn.out_proj``,
    ``feed_forward.{intermediate,output}``, ``self_attn_layer_norm``, ``feed_forward_layer_norm``. No clamp."""

    returns_tuple: ClassVar[bool] = True
    # ProphetNetEncoder records output_hidden_states itself, between layers.
    pads_every_output: ClassVar[bool] = True

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        attention, feed_forward = layer.self_attn, layer.feed_forward
        self.use_linears(
            in_proj=(attention.query_proj, attention.key_proj, attention.value_proj),
            out_proj=attention.out_proj,
            linear1=feed_forward.intermediate,
            linear2=feed_forward.output,
        )
        self.use_norms(norm1=layer.self_attn_layer_norm, norm2=layer.feed_forward_layer_norm)
        self.norm_first = False
        self.num_heads = int(attention.num_attn_heads)
        self.embed_dim = self.num_heads * int(attention.head_dim)  # scores divided by sqrt(head_dim): the default
        self.activation = check_activation(
            feed_forward.activation_fn, getattr(config, "activation_function", None), self.bt_layer_name,
            "activation_function",
        )
        self.attention_dropout = float(attention.attention_dropout)
        self.attention_output_dropout = float(attention.dropout)  # inside the attention, after out_proj
        self.feed_forward_dropout = float(feed_forward.dropout)
        self.feed_forward_inner_dropout = float(feed_forward.activation_dropout)

    def format_output(self, hidden_states: Tensor, attentions: Tensor | None, call: LayerCall) -> Any:
        if not call.output_attentions:
            return (hidden_states,)
        return hidden_states, self._scores(call)

    def _scores(self, call: LayerCall) -> Tensor:
        """What ProphetNet's attention returns as attentions: ``q.k / sqrt(head_dim)`` plus the mask."""
        tokens = call.hidden_states
        if isinstance(tokens, PackedTokens):
            tokens = tokens.padded()
        q, k, _ = self.project_qkv(tokens)  # (batch, seq, heads, head_dim), as the reference path projects
        q = q.transpose(1, 2) / (q.shape[-1] ** 0.5)
        scores = torch.matmul(q, k.permute(0, 2, 3, 1))
        return scores if call.attention_mask is None else scores + call.attention_mask

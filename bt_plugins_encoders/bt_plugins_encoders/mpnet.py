"""The adapter for MPNet's encoder layer (``MPNetLayer``): BERT's layer plus a relative position bias.

``MPNetEncoder`` computes one relative position bias, ``(batch, heads, seq, seq)`` from a learned
bucket embedding, before its first layer and hands the same tensor to every layer, which adds it to
the scaled attention scores before the padding mask. The layer is otherwise BERT's: q/k/v/o linears,
post-norm, a two-linear feed-forward. So the adapter declares BERT's parts and passes the bias on as
the call's score bias; the bias is indexed at padded positions, so any padding layout stays exact.

Module names were checked against transformers 5.10.2 and 5.24.0 (identical).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from bt_core.layer import LayerCall

from .adapters import EncoderLayerAdapter

__all__ = ["MPNetLayerAdapter"]


class MPNetLayerAdapter(EncoderLayerAdapter):
    """``MPNetLayer``: post-norm BERT layer whose attention scores get the encoder's ``position_bias``."""

    PATHS: ClassVar[dict[str, tuple[str, ...]]] = {
        "query": ("attention.attn.q",),
        "key": ("attention.attn.k",),
        "value": ("attention.attn.v",),
        "attention output": ("attention.attn.o",),
        "feed-forward input": ("intermediate.dense",),
        "feed-forward output": ("output.dense",),
        "first layer norm": ("attention.LayerNorm",),
        "second layer norm": ("output.LayerNorm",),
    }
    #: ``MPNetEncoder`` indexes the layer's output (``[0]``, and ``[1]`` for attentions).
    returns_tuple: ClassVar[bool] = True
    # The encoder records ``output_hidden_states`` in its own loop, from each layer's output, without
    # telling the layer; packed tokens carried between layers would land in the user's hidden states.
    pads_every_output: ClassVar[bool] = True

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        """``MPNetEncoder`` calls ``layer(hidden, attention_mask, position_bias, output_attentions=...)``."""
        call = super().parse_call(hidden_states, args, kwargs)
        call.score_bias = args[1] if len(args) > 1 else kwargs.get("position_bias")
        if len(args) > 2:
            call.output_attentions = bool(args[2])
        return call

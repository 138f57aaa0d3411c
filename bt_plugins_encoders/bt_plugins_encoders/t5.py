"""Adapters for the encoder blocks of T5, mT5 and UMT5 (``T5Block``, ``MT5Block``, ``UMT5Block``).

A T5 encoder block is a pre-norm layer with RMSNorm (``T5LayerNorm``), bias-free q/k/v/o linears whose
width ``num_heads * d_kv`` may differ from ``d_model``, unscaled scores plus a relative position bias, and
a relu or gated (``wi_0`` through the activation, times ``wi_1``) feed-forward.

The relative position bias: in T5 and mT5 the first block's attention owns the bucket embedding and
computes the bias, which the stack hands to every later block as ``position_bias``; in UMT5 every
block computes its own. The bias transformers hands around may carry the padding mask (5.10 adds it
in), so the adapters compute the bias from the bucket embedding themselves and pass on only that.

Decoder blocks are the same classes with cross-attention and a causal, cached self-attention;
:meth:`T5BlockAdapter.converts` leaves them as they are, so a seq2seq model converts its encoder only.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, PackedTokens, UnsupportedModelError
from bt_core.layer import LayerCall, check_activation, find_submodule

__all__ = ["T5BlockAdapter", "UMT5BlockAdapter"]

_PLUGIN = "bt-plugins-encoders"


def _legacy_call_convention() -> bool:
    """Whether the installed transformers' T5 blocks take ``output_attentions`` and return tuples
    indexed by the stack (5.10), rather than having hooks record attentions (5.2x)."""
    from transformers.models.t5.modeling_t5 import T5Block

    return "output_attentions" in inspect.signature(T5Block.forward).parameters


_LEGACY = _legacy_call_convention()


class T5BlockAdapter(BetterTransformerBaseLayer):
    """``T5Block``/``MT5Block`` of an encoder: pre-RMSNorm, unscaled scores plus the stack's shared
    relative position bias (computed by the first block), relu or gated feed-forward."""

    # transformers 5.10's stack records output_hidden_states itself between blocks, where bt cannot
    # see it: every block then hands back the padded batch (5.2x records them with hooks bt installs).
    pads_every_output: ClassVar[bool] = _LEGACY

    @classmethod
    def converts(cls, layer: nn.Module, config: Any) -> bool:
        """Encoder blocks only: a seq2seq model's decoder blocks share the class and stay the model's own."""
        return not getattr(layer, "is_decoder", False)

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        if not self.converts(layer, config):  # the conversion walk skips these; built directly, refuse
            raise UnsupportedModelError(
                f"{self.bt_layer_name}: a decoder block (is_decoder=True: cross-attention, causal cached "
                "self-attention), which bt does not convert; BetterTransformer.transform(model) converts the "
                "encoder blocks of a seq2seq model and leaves these as they are."
            )
        get = lambda path, what: find_submodule(layer, (path,), what, plugin=_PLUGIN)  # noqa: E731
        attention = get("layer.0.SelfAttention", "self-attention")
        dense = get("layer.1.DenseReluDense", "feed-forward")
        gated = hasattr(dense, "wi_0")
        self.use_linears(
            in_proj=(get("layer.0.SelfAttention.q", "query"), attention.k, attention.v),
            out_proj=attention.o,
            linear1=(dense.wi_0, dense.wi_1) if gated else get("layer.1.DenseReluDense.wi", "feed-forward input"),
            linear2=dense.wo,
        )
        self.use_norms(norm1=get("layer.0.layer_norm", "attention norm"), norm2=get("layer.1.layer_norm", "ff norm"))
        self.norm_first = True
        self.num_heads = int(attention.n_heads)
        self.head_dim = int(attention.key_value_proj_dim)
        self.embed_dim = int(attention.d_model)
        self.score_scale = 1.0  # T5 folds the scale into its initialisation: q.k is not divided by sqrt(d_kv)
        self.gated_half = "first" if gated else None  # act(wi_0(x)) * wi_1(x)
        self.activation = check_activation(
            dense.act, getattr(config, "dense_act_fn", None), self.bt_layer_name, "dense_act_fn"
        )
        # T5 drops out the attention probabilities, each branch's output and the feed-forward's activations.
        self.attention_dropout = float(attention.dropout)
        self.hidden_dropout = float(get("layer.0.dropout", "attention dropout").p)
        self.feed_forward_dropout = float(get("layer.1.dropout", "feed-forward dropout").p)
        self.feed_forward_inner_dropout = float(dense.dropout.p)
        self.__dict__["_attention"] = attention  # for compute_bias; unregistered, its q/k/v are fused here
        if attention.has_relative_attention_bias:  # T5: the first block; UMT5: every block
            # Registered here so its parameter stays in the model (trainable, counted once, given back).
            self.relative_attention_bias = attention.relative_attention_bias

    # -- the call ------------------------------------------------------------------------------------

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        call = super().parse_call(hidden_states, args, kwargs)
        if hasattr(self, "relative_attention_bias"):
            seq_len = _padded_length(hidden_states)
            call.score_bias = self._attention.compute_bias(seq_len, seq_len, device=hidden_states.device)
        else:
            # Later T5 blocks: the bias the first converted block returned (never the mask-carrying one
            # of an original block: a stack converts all its blocks).
            call.score_bias = self.shared_position_bias(args, kwargs)
        return call

    @staticmethod
    def shared_position_bias(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
        """The ``position_bias`` argument: (attention_mask, position_bias, ...) in T5's blocks."""
        return args[1] if len(args) > 1 else kwargs.get("position_bias")

    def format_output(self, hidden_states: Tensor, attentions: Tensor | None, call: LayerCall) -> Any:
        hidden_states = _clamp_like_t5(hidden_states)
        if _LEGACY:  # 5.10: (hidden, position_bias) + (self-attention weights,) when asked
            return (
                (hidden_states, call.score_bias, attentions)
                if call.output_attentions
                else (hidden_states, call.score_bias)
            )
        return hidden_states, call.score_bias, None  # 5.2x: (hidden, self-attention bias, cross-attention bias)


class UMT5BlockAdapter(T5BlockAdapter):
    """``UMT5Block`` of an encoder: T5's block, with a relative position bias of its own in every block."""

    def format_output(self, hidden_states: Tensor, attentions: Tensor | None, call: LayerCall) -> Any:
        hidden_states = _clamp_like_t5(hidden_states)
        if _LEGACY:  # 5.10: (hidden,) + (self-attention weights, cross-attention weights) when asked
            return (hidden_states, attentions, None) if call.output_attentions else (hidden_states,)
        return hidden_states


def _padded_length(hidden_states: Tensor) -> int:
    """The padded sequence length, also when an earlier block handed over packed tokens."""
    if isinstance(hidden_states, PackedTokens):
        return int(hidden_states.packing.padded_shape[1])
    return int(hidden_states.shape[1])


def _clamp_like_t5(hidden_states: Tensor) -> Tensor:
    """T5 blocks clamp float16 outputs short of infinity (after the feed-forward, as here), so the next
    block's norm sees finite values; a no-op in every other dtype and whenever nothing overflowed."""
    if hidden_states.dtype != torch.float16:
        return hidden_states
    top = torch.finfo(torch.float16).max
    clamp = torch.where(torch.isinf(hidden_states).any(), top - 1000, top)
    return torch.clamp(hidden_states, min=-clamp, max=clamp)

"""How a converted layer executes a call: the dense and reference strategies, and the dispatch.

Every strategy is exact against the original layer; :mod:`bt_core._strategy` chooses one per call.
Tracers and exporters (``torch.jit.trace``, the ONNX exporters, ``torch.export``) get ``dense`` (or
``reference`` under autograd) with the mask read by ops alone, so the program they record is right
for any padding layout. ``torch.compile`` runs the layers eagerly (a graph break around each), so
the packed strategy still skips padding; :class:`PackedTokens` pass between them through the
compiled code as they do eagerly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ._fused import fused, unnest
from ._masks import MaskLayout, forget_layout, stack_layout, traceable_layout
from ._math import expand_kv, layer_math, rotary_per_position, rotate, score_mask, window_keep
from ._packing import PackedTokens, packed
from ._strategy import (
    Strategy,
    _fused_wins,
    choose_strategy,
    force_strategy,
    record,
    record_strategies,
    why_not_fused,
)

if TYPE_CHECKING:
    from .layer import BetterTransformerBaseLayer, LayerCall

__all__ = [
    "PackedTokens",
    "Strategy",
    "_fused_wins",
    "choose_strategy",
    "force_strategy",
    "record_strategies",
    "run_layer",
    "why_not_fused",
]


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def run_layer(layer: BetterTransformerBaseLayer, call: LayerCall) -> tuple[Tensor, Tensor | None]:
    """Compute one converted layer; returns the hidden states and, when asked, attention probabilities."""
    if _tracing():
        return _traceable(layer, call)
    if torch.compiler.is_compiling():
        return _eager(layer, call)
    return _run(layer, call)


def _run(layer: BetterTransformerBaseLayer, call: LayerCall) -> tuple[Tensor, Tensor | None]:
    hidden_states = call.hidden_states
    packed_input = isinstance(hidden_states, PackedTokens)
    last = layer.is_last_layer
    if hidden_states.is_nested or packed_input:
        layout = MaskLayout(key_keep=None, attend=None, is_key_padding=True)  # read by the first layer
        if last:
            forget_layout()
    else:
        batch, seq_len = hidden_states.shape[0], hidden_states.shape[1]
        layout = stack_layout(call.attention_mask, batch, seq_len, first=layer.is_first_layer, last=last)
    strategy = choose_strategy(layer, call, layout, packed_input=packed_input)
    record(strategy)
    if strategy is Strategy.PACKED:
        return packed(layer, call, layout, last=last), None
    if strategy is Strategy.FUSED:
        return fused(layer, hidden_states, layout, last=last), None
    if isinstance(hidden_states, PackedTokens):  # an earlier layer packed the batch; this call needs it padded
        layout = hidden_states.packing.layout
        hidden_states = hidden_states.padded()
    elif hidden_states.is_nested:  # an earlier layer nested the batch: its rows' lengths are the padding
        hidden_states, layout = unnest(hidden_states)
    if strategy is Strategy.REFERENCE:
        return _reference(layer, hidden_states, layout, call)
    return _dense(layer, hidden_states, layout, call, onednn=True), None


#: Under torch.compile the layers run as they do eagerly: dynamo breaks the graph around each call.
_eager = torch.compiler.disable(_run)


def _traceable(layer: BetterTransformerBaseLayer, call: LayerCall) -> tuple[Tensor, Tensor | None]:
    hidden_states = call.hidden_states
    layout = traceable_layout(call.attention_mask, hidden_states.shape[0], hidden_states.shape[1])
    if layer.forward_checker(call) is not None:
        return _reference(layer, hidden_states, layout, call)
    return _dense(layer, hidden_states, layout, call), None


def _padded_positions(
    layer: BetterTransformerBaseLayer, call: LayerCall, layout: MaskLayout, hidden_states: Tensor
) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None]:
    """Rotary tables, and the combined keep mask (padding and window), for a padded batch."""
    batch, seq_len = hidden_states.shape[0], hidden_states.shape[1]
    rotary = None
    if call.rotary is not None:
        cos, sin = rotary_per_position(call.rotary, batch, seq_len)
        rotary = (cos[:, :, None, :], sin[:, :, None, :])
    keep = layout.attend
    if layer.attention_window is not None:
        window = window_keep(torch.arange(seq_len, device=hidden_states.device), layer.attention_window)
        keep = window if keep is None else keep & window
    return rotary, keep


def _heads_first(
    layer: BetterTransformerBaseLayer, q: Tensor, k: Tensor, v: Tensor, rotary: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Padded ``(batch, seq, heads, head_dim)`` q/k/v, rotated where declared, as ``(batch, heads, seq, head_dim)``
    with one key/value head per query head."""
    if rotary is not None:
        q, k = rotate(q, *rotary, str(layer.rotary)), rotate(k, *rotary, str(layer.rotary))
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    k, v = expand_kv(layer, k, v, head_axis=1)
    return q, k, v


def _dense(
    layer: BetterTransformerBaseLayer,
    hidden_states: Tensor,
    layout: MaskLayout,
    call: LayerCall,
    *,
    onednn: bool = False,
) -> Tensor:
    rotary, keep = _padded_positions(layer, call, layout, hidden_states)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = _heads_first(layer, q, k, v, rotary)
        mask = score_mask(keep, call.score_bias, q.dtype)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=layer.score_scale)
        return context.transpose(1, 2).flatten(2)

    return layer_math(layer, hidden_states, attend, onednn=onednn)


def _reference(
    layer: BetterTransformerBaseLayer, hidden_states: Tensor, layout: MaskLayout, call: LayerCall
) -> tuple[Tensor, Tensor | None]:
    """Differentiable math attention, with dropout, head mask and the probabilities."""
    training = layer.training
    probabilities: list[Tensor] = []
    rotary, keep = _padded_positions(layer, call, layout, hidden_states)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = _heads_first(layer, q, k, v, rotary)
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores / math.sqrt(q.shape[-1]) if layer.score_scale is None else scores * layer.score_scale
        if call.score_bias is not None:
            scores = scores + call.score_bias.to(scores.dtype)
        if keep is not None:
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        # At least float32 (half-precision scores lose the softmax); float64 stays float64, where a
        # query whose keys are all masked (finfo.min) would otherwise become -inf and NaN.
        probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
        probs = F.dropout(probs, p=layer.attention_dropout, training=training)
        if call.head_mask is not None:
            probs = probs * call.head_mask
        context, probs = layer.attention_probe(torch.matmul(probs, v).transpose(1, 2).flatten(2), probs)
        probabilities.append(probs)
        return context

    def drop_out(t: Tensor, p: float) -> Tensor:
        if layer.dropout_time_first:  # the mask drawn over (seq, batch, ...), as the original draws it
            return F.dropout(t.transpose(0, 1).contiguous(), p=p, training=True).transpose(0, 1)
        return F.dropout(t, p=p, training=True)

    def regularise(t: Tensor, branch: str) -> Tensor:
        if not training:
            return t
        if branch == "feed_forward_inner":  # no stochastic depth inside a branch
            return drop_out(t, layer.feed_forward_inner_dropout)
        t = drop_out(t, layer.branch_dropout(branch))
        if layer.drop_path > 0:  # stochastic depth: drop the whole branch for some samples
            keep_rate = 1.0 - layer.drop_path
            sample = t.new_empty((t.shape[0],) + (1,) * (t.dim() - 1)).bernoulli_(keep_rate)
            t = t * sample.div_(keep_rate) if keep_rate > 0 else t * 0.0
        return t

    out = layer_math(layer, hidden_states, attend, regularise)
    return out, probabilities[0] if probabilities else None

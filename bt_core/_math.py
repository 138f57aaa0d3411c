"""The layer's arithmetic, once, for every ordinary-op strategy (packed, dense, reference, traceable).

Every declared part is computed here: projections (a shared/fused weight, or the layer's own wrapped
module called), rotary positions, score bias, scale, window and grouped key/value heads in attention,
a plain or gated feed-forward, LayerNorm/RMSNorm/no norm, pre- or post-norm. The strategies differ
only in the tokens they hand in (the padded batch, or the packed real tokens) and in ``attend``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ._activations import activation_function
from ._autocast_weights import project

if TYPE_CHECKING:
    from .layer import BetterTransformerBaseLayer

#: ``attend(q, k, v)``: q ``(..., heads, head_dim)``, k/v ``(..., kv_heads, head_dim)`` -> ``(..., heads * head_dim)``.
Attend = Callable[[Tensor, Tensor, Tensor], Tensor]

#: oneDNN's linear on the declared (plain, shared) weight: on this project's AVX-512 CPU it ran BERT- and
#: MiniLM-shaped projections 1.1-1.4x faster than ``F.linear`` (MKL) in float32 at 1 thread, 1.2-1.7x at 2,
#: with no packed copy of the weight. Inference on CPU only (no autograd, autocast or export support).
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_dtypes() -> tuple[torch.dtype, ...]:
    """float32, and bfloat16 where the CPU computes it natively (elsewhere ``F.linear`` has its own path)."""
    if not _ONEDNN_LINEAR:
        return ()
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return (torch.float32, torch.bfloat16) if supported is not None and supported() else (torch.float32,)


_ONEDNN_DTYPES = _onednn_dtypes()

#: Activations with an in-place kernel; inference applies them to the feed-forward's own buffer.
_INPLACE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": torch.ops.aten.gelu_,
    "relu": torch.relu_,
}


def matmul(x: Tensor, weight: Tensor, bias: Tensor | None, onednn: bool) -> Tensor:
    """``x @ weight.T + bias``: oneDNN's kernel where ``onednn`` allows it (see ``_ONEDNN_LINEAR``)."""
    if onednn and weight.dtype == x.dtype and weight.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


@dataclass(frozen=True)
class Kernels:
    """How one ``layer_math`` call computes declared projections: oneDNN's linear (float32/bf16
    inference), or under CPU autocast (``autocast_low``) from the layer's cached low-precision casts."""

    onednn: bool = False
    autocast_low: torch.dtype | None = None

    def matmul(
        self, layer: BetterTransformerBaseLayer, key: str, x: Tensor, weight: Tensor, bias: Tensor | None
    ) -> Tensor:
        if self.autocast_low is not None:
            return project(layer, key, x, weight, bias, self.autocast_low)
        return matmul(x, weight, bias, self.onednn)


PLAIN = Kernels()


def autocast_low_dtype(x: Tensor) -> torch.dtype | None:
    """Under CPU autocast, the dtype it computes projections of ``x`` in, when oneDNN computes that dtype
    natively and ``x`` is float32 or already in it: projections then run from the layer's cached casts
    (:mod:`._autocast_weights`). None otherwise (``F.linear`` under autocast, as the original)."""
    if x.device.type != "cpu":
        return None
    low = torch.get_autocast_dtype("cpu")
    return low if low != torch.float32 and low in _ONEDNN_DTYPES and x.dtype in (torch.float32, low) else None


def onednn_allowed(x: Tensor) -> bool:
    """Whether projections of ``x`` may use oneDNN's linear: on CPU, in a dtype it computes natively. Not
    under autocast (which casts ``F.linear``'s inputs, and would not cast this kernel's): callers check."""
    return _ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype in _ONEDNN_DTYPES


def linear(
    layer: BetterTransformerBaseLayer, role: str, x: Tensor, kernels: Kernels = PLAIN
) -> Tensor | tuple[Tensor, ...]:
    """``role``'s projection of ``x``: the declared weight (through ``kernels``), or the wrapped modules
    called (a tuple when the role has several, e.g. q, k, v)."""
    modules = layer._bt_calls.get(role)
    if modules is None:
        return kernels.matmul(layer, role, x, getattr(layer, f"{role}_weight"), getattr(layer, f"{role}_bias"))
    if len(modules) == 1:
        return modules[0](x)
    return tuple(module(x) for module in modules)


def project_qkv(
    layer: BetterTransformerBaseLayer, x: Tensor, kernels: Kernels = PLAIN
) -> tuple[Tensor, Tensor, Tensor]:
    """q ``(..., heads, head_dim)`` and k, v ``(..., kv_heads, head_dim)`` of the tokens ``x``."""
    heads = int(layer.num_heads)  # type: ignore[arg-type]
    kv_heads = int(layer.num_kv_heads or heads)
    head_dim = layer.attention_head_dim
    projected = linear(layer, "in_proj", x, kernels)
    if isinstance(projected, tuple):
        q, k, v = projected
    else:
        q, k, v = projected.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
    q = q.unflatten(-1, (heads, head_dim))
    return q, k.unflatten(-1, (kv_heads, head_dim)), v.unflatten(-1, (kv_heads, head_dim))


def rotate(x: Tensor, cos: Tensor, sin: Tensor, style: str) -> Tensor:
    """Rotary positions on ``x`` ``(..., heads, head_dim)``.

    ``cos``/``sin`` are ``(..., 1, dim)`` and cover the first ``dim`` channels of each head.
    """
    dim = cos.shape[-1]
    part = x[..., :dim] if dim < x.shape[-1] else x
    if style == "half":
        first, second = part.chunk(2, dim=-1)
        turned = torch.cat((-second, first), dim=-1)
    else:  # interleaved pairs (RoFormer)
        turned = torch.stack((-part[..., 1::2], part[..., ::2]), dim=-1).reshape(part.shape)
    rotated = part * cos + turned * sin
    return torch.cat((rotated, x[..., dim:]), dim=-1) if dim < x.shape[-1] else rotated


def rotary_per_position(call_rotary: tuple[Tensor, Tensor], batch: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """The call's cos/sin as ``(batch, seq, dim)``, whatever leading shape the model gave them."""
    out = []
    for table in call_rotary:
        if table.dim() == 4:  # (batch, 1, seq, dim)
            table = table.squeeze(1)
        if table.dim() == 2:
            table = table[None]
        out.append(table[:, :seq_len].expand(batch, seq_len, table.shape[-1]))
    return out[0], out[1]


def expand_kv(layer: BetterTransformerBaseLayer, k: Tensor, v: Tensor, head_axis: int) -> tuple[Tensor, Tensor]:
    """Repeat grouped key/value heads to one per query head (as transformers' repeat_kv does)."""
    kv_heads = layer.num_kv_heads
    if not kv_heads or kv_heads == layer.num_heads:
        return k, v
    groups = int(layer.num_heads) // int(kv_heads)  # type: ignore[arg-type]
    return k.repeat_interleave(groups, dim=head_axis), v.repeat_interleave(groups, dim=head_axis)


def window_keep(positions: Tensor, window: int) -> Tensor:
    """``(..., q, k)`` True where key and query are at most ``window`` positions apart."""
    return (positions[..., :, None] - positions[..., None, :]).abs() <= window


def score_mask(keep: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """One SDPA ``attn_mask``: the bool keep mask alone, or the float bias with dropped keys at -inf."""
    if bias is None:
        return keep
    bias = bias.to(dtype)
    return bias if keep is None else bias.masked_fill(~keep, float("-inf"))


def norm(layer: BetterTransformerBaseLayer, which: str, x: Tensor) -> Tensor:
    kind = layer.norm1_kind if which == "norm1" else layer.norm2_kind
    if kind == "none":
        return x
    weight, bias = getattr(layer, f"{which}_weight"), getattr(layer, f"{which}_bias")
    eps = float(getattr(layer, f"{which}_eps"))
    if kind == "layer":
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    # RMSNorm as the llama family ("rms") and T5 ("t5_rms") compute it: float32 statistics; llama also
    # scales the input in float32, T5 in the input's own precision (the same except for float64).
    upcast = x.to(torch.float32)
    variance = upcast.pow(2).mean(-1, keepdim=True)
    return weight * ((upcast if kind == "rms" else x) * torch.rsqrt(variance + eps)).to(x.dtype)


def _halves(layer: BetterTransformerBaseLayer, x: Tensor, kernels: Kernels) -> tuple[Tensor, Tensor]:
    """The two halves of a gated feed-forward's ``linear1`` output, each its own contiguous tensor: two
    GEMMs on the halves of the weight (views, no copy) run faster on CPU than one of twice the width
    followed by strided reads (GTE at BERT-base size: 0.97x of transformers without padding, 1.0x with)."""
    if "linear1" in layer._bt_calls:
        inner = linear(layer, "linear1", x)
        if isinstance(inner, tuple):
            return (inner[0], inner[1]) if len(inner) == 2 else torch.cat(inner, dim=-1).chunk(2, dim=-1)
        first, second = inner.chunk(2, dim=-1)
        return first, second
    weight, bias = layer.linear1_weight, layer.linear1_bias
    half = weight.shape[0] // 2
    return (
        kernels.matmul(layer, "linear1[0]", x, weight[:half], None if bias is None else bias[:half]),
        kernels.matmul(layer, "linear1[1]", x, weight[half:], None if bias is None else bias[half:]),
    )


def layer_math(
    layer: BetterTransformerBaseLayer,
    tokens: Tensor,
    attend: Attend,
    regularise: Callable[[Tensor, str], Tensor] | None = None,
    *,
    onednn: bool = False,
) -> Tensor:
    """One encoder layer on ``tokens`` of shape ``(..., hidden)``.

    With ``regularise`` (the reference path) every op is out of place, so autograd can differentiate
    it, and ``regularise(output, branch)`` is applied to each residual branch's output before it is
    added (``branch`` is ``"attention"`` or ``"feed_forward"``): dropout and stochastic depth. Without
    it (the fast paths) residual adds and the activation run in place on buffers this function owns,
    never on ``tokens``: one pass over memory instead of an allocation and two passes, about 3% of a
    BERT-base layer on CPU. ``onednn`` (the packed and dense strategies, never tracing or export):
    declared projections run oneDNN's linear where :func:`onednn_allowed`, and under CPU autocast from
    the layer's cached low-precision weights (:mod:`._autocast_weights`).
    """
    own_buffers = regularise is None  # no autograd: the fast paths may write into buffers they made
    fast = onednn and own_buffers
    if fast and torch.is_autocast_enabled(tokens.device.type):
        # oneDNN's kernel does not cast its inputs as autocast casts F.linear's: bt casts them itself.
        kernels = Kernels(autocast_low=autocast_low_dtype(tokens))
    else:
        kernels = Kernels(onednn=fast and onednn_allowed(tokens))
    act = (_INPLACE_ACTIVATIONS.get(layer.activation) if own_buffers else None) or activation_function(layer.activation)

    def keeps_dtype(buffer: Tensor, other: Tensor) -> bool:
        # An in-place op keeps ``buffer``'s dtype where the original's out-of-place op promotes: under
        # autocast a projection's output is in the low dtype and the residual stream is not.
        return own_buffers and torch.promote_types(buffer.dtype, other.dtype) == buffer.dtype

    def branch(output: Tensor, name: str, residual: Tensor) -> Tensor:
        if regularise is not None:
            return residual + regularise(output, name)
        return output.add_(residual) if keeps_dtype(output, residual) else output + residual

    def attention_block(x: Tensor, residual: Tensor) -> Tensor:
        context = attend(*project_qkv(layer, x, kernels))
        return branch(linear(layer, "out_proj", context, kernels), "attention", residual)  # type: ignore[arg-type]

    def feed_forward(x: Tensor, residual: Tensor) -> Tensor:
        if layer.gated_half is None:
            inner = act(linear(layer, "linear1", x, kernels))  # type: ignore[arg-type]
        else:
            first, second = _halves(layer, x, kernels)
            gate, up = (first, second) if layer.gated_half == "first" else (second, first)
            # In place on the gate's own buffer when allowed: no intermediate the size of ``up``.
            inner = act(gate).mul_(up) if keeps_dtype(gate, up) else act(gate) * up
        if regularise is not None:
            inner = regularise(inner, "feed_forward_inner")
        return branch(linear(layer, "linear2", inner, kernels), "feed_forward", residual)  # type: ignore[arg-type]

    if layer.norm_first:
        x = attention_block(norm(layer, "norm1", tokens), tokens)
        return feed_forward(norm(layer, "norm2", x), x)
    x = norm(layer, "norm1", attention_block(tokens, tokens))
    return norm(layer, "norm2", feed_forward(x, x))

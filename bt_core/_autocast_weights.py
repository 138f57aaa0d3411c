"""Projections under CPU autocast, with each weight cast once instead of on every call.

Autocast computes ``F.linear`` on float32 weights by casting input, weight and bias to its low dtype,
then multiplying in that dtype; it casts a weight on every call under ``torch.inference_mode()``, and
once per ``autocast`` block under ``torch.no_grad()`` (its cast cache is emptied when the block exits). A converted
layer keeps the cast weight and bias instead, laid out once for oneDNN's kernel, and multiplies the
same low-precision operands: the same arithmetic as the original under autocast, without casting the
weights of every layer for every batch. On the AVX-512 (bf16) CPU of BENCHMARKS.md that took MiniLM-
and BERT-shaped projections from 1.1x to 1.7x faster than autocast's ``F.linear``.

The copies cost half the float32 projections' memory (bfloat16), are made on the first call under
autocast, and are remade when a weight changes (in-place updates bump its version, a new tensor has a
new address). Weights made under ``torch.inference_mode()`` have no version to watch: they are cast on
every call, as autocast does. They are never saved: ``state_dict``, pickling and ``copy.deepcopy`` leave them out, and
``BetterTransformer.reverse`` drops them with the converted layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CACHE_ATTRIBUTE", "autocast_low_dtype", "project"]

#: The layer ``__dict__`` entry holding ``{key: (stamp, weight, bias)}``.
CACHE_ATTRIBUTE = "_bt_autocast_weights"

_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_REORDER = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)


def _bf16_native() -> bool:
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and _LINEAR is not None and supported and supported())


_NATIVE = {torch.bfloat16} if _bf16_native() else set()


def autocast_low_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype CPU autocast computes projections of ``x`` in, when bt may compute them from cached casts
    (a dtype oneDNN's CPU kernel computes natively, ``x`` float32 or already that dtype); else None."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    low = torch.get_autocast_dtype("cpu")
    return low if low in _NATIVE and x.dtype in (torch.float32, low) else None


def project(layer: nn.Module, key: str, x: Tensor, weight: Tensor, bias: Tensor | None, low: torch.dtype) -> Tensor:
    """``F.linear(x, weight, bias)`` as autocast to ``low`` computes it, from ``layer``'s cached casts.

    ``key`` names the weight within the layer (a role, or a part of one). Only float32 weights are
    cached; others go through ``F.linear`` under autocast as the original's would.
    """
    if weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
        return torch.nn.functional.linear(x, weight, bias)
    if weight.is_inference() or (bias is not None and bias.is_inference()):
        # Made under torch.inference_mode(): no version counter tells an in-place change, so no cache.
        cast_weight, cast_bias = weight.to(low), None if bias is None else bias.to(low)
    else:
        cast_weight, cast_bias = _cast(layer, key, weight, bias, low)
    assert _LINEAR is not None  # autocast_low_dtype returned a dtype only where it exists
    return _LINEAR(x.to(low), cast_weight, cast_bias, "none", [], "")


def _cast(layer: nn.Module, key: str, weight: Tensor, bias: Tensor | None, low: torch.dtype) -> tuple[Tensor, Any]:
    cache: dict[str, tuple[tuple[Any, ...], Tensor, Tensor | None]] = layer.__dict__.setdefault(CACHE_ATTRIBUTE, {})
    stamp = (low, weight.data_ptr(), weight._version, tuple(weight.shape))
    stamp += (None,) if bias is None else (bias.data_ptr(), bias._version)
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1], hit[2]
    with torch.no_grad():
        cast_weight = weight.detach().to(low).contiguous()
        if _REORDER is not None:
            # oneDNN's blocked layout for this weight: made once here, it saves the kernel a reorder per
            # call (1.1-1.2x on MiniLM's projections); the results are bit for bit those of the plain layout.
            cast_weight = _REORDER(cast_weight, None)
        cast_bias = None if bias is None else bias.detach().to(low)
    cache[key] = (stamp, cast_weight, cast_bias)
    return cast_weight, cast_bias

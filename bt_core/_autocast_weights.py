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
tensor, held by weak reference so that a freed one's address cannot pass for it). Weights made under
``torch.inference_mode()`` have no version to watch: they are cast on every call, as autocast does. The
copies are never saved: ``state_dict``, pickling and ``copy.deepcopy`` leave them out, and
``BetterTransformer.reverse`` drops them with the converted layers. Whether autocast's dtype is one
oneDNN computes natively is decided with the other oneDNN checks, in :mod:`._math`.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CACHE_ATTRIBUTE", "project"]

#: The layer ``__dict__`` entry holding ``{key: _Cast}``.
CACHE_ATTRIBUTE = "_bt_autocast_weights"

_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_REORDER = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)


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
    assert _LINEAR is not None  # _math offers ``low`` only where oneDNN's linear exists
    return _LINEAR(x.to(low), cast_weight, cast_bias, "none", [], "")


class _Cast:
    """One weight's (and bias's) cast, and what it was cast from."""

    def __init__(self, low: torch.dtype, weight: Tensor, bias: Tensor | None) -> None:
        self.sources = tuple(_source(t) for t in (weight, bias))
        self.stamp = (low, *(_stamp(t) for t in (weight, bias)))
        with torch.no_grad():
            cast_weight = weight.detach().to(low).contiguous()
            if _REORDER is not None:
                # oneDNN's blocked layout for this weight: made once here, it saves the kernel a reorder per
                # call (1.1-1.2x on MiniLM's projections); the results are bit for bit those of the plain layout.
                cast_weight = _REORDER(cast_weight, None)
            self.weight: Tensor = cast_weight
            self.bias = None if bias is None else bias.detach().to(low)

    def made_from(self, low: torch.dtype, weight: Tensor, bias: Tensor | None) -> bool:
        alive = all((ref is None) == (t is None) and (ref is None or ref() is _base(t)) for ref, t in
                    zip(self.sources, (weight, bias), strict=True))  # fmt: skip
        return alive and self.stamp == (low, *(_stamp(t) for t in (weight, bias)))


def _base(tensor: Tensor | None) -> Tensor | None:
    """The tensor a view was taken of (the declared parameter for a half of ``linear1``), or the tensor."""
    return tensor if tensor is None or tensor._base is None else tensor._base


def _source(tensor: Tensor | None) -> weakref.ref[Tensor] | None:
    base = _base(tensor)
    return None if base is None else weakref.ref(base)


def _stamp(tensor: Tensor | None) -> tuple[Any, ...] | None:
    return None if tensor is None else (tensor.data_ptr(), tensor._version, tuple(tensor.shape))


def _cast(layer: nn.Module, key: str, weight: Tensor, bias: Tensor | None, low: torch.dtype) -> tuple[Tensor, Any]:
    cache: dict[str, _Cast] = layer.__dict__.setdefault(CACHE_ATTRIBUTE, {})
    hit = cache.get(key)
    if hit is None or not hit.made_from(low, weight, bias):
        hit = cache[key] = _Cast(low, weight, bias)
    return hit.weight, hit.bias

"""The fused strategy: ``torch._transformer_encoder_layer_fwd`` on a nested tensor.

The first layer nests the padded batch (right padding only); following layers receive the nested
tensor and stay on the kernel; the last one pads it back. The padded shape travels on the nested
tensor itself, so no layer remembers anything between calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._masks import NO_MASK, MaskLayout

if TYPE_CHECKING:
    from .layer import BetterTransformerBaseLayer

_PADDED_SHAPE = "_bt_padded_shape"


def fused(layer: BetterTransformerBaseLayer, hidden_states: Tensor, layout: MaskLayout, *, last: bool) -> Tensor:
    if hidden_states.is_nested:
        padded_shape = getattr(hidden_states, _PADDED_SHAPE)
    else:
        padded_shape = tuple(hidden_states.shape)
        if layout.key_keep is not None:
            hidden_states = torch._nested_tensor_from_mask(hidden_states, layout.key_keep, mask_check=False)
    out = torch._transformer_encoder_layer_fwd(
        hidden_states,
        layer.embed_dim,
        layer.num_heads,
        layer.in_proj_weight,
        _bias(layer, "in_proj_bias", layer.in_proj_weight),
        layer.out_proj_weight,
        _bias(layer, "out_proj_bias", layer.out_proj_weight),
        layer.activation == "gelu",
        layer.norm_first,
        layer.norm1_eps,
        layer.norm1_weight,
        _bias(layer, "norm1_bias", layer.norm1_weight),
        layer.norm2_weight,
        _bias(layer, "norm2_bias", layer.norm2_weight),
        layer.linear1_weight,
        _bias(layer, "linear1_bias", layer.linear1_weight),
        layer.linear2_weight,
        _bias(layer, "linear2_bias", layer.linear2_weight),
        None,
        None,
    )
    if not out.is_nested:
        return out
    if last:
        return out.to_padded_tensor(0.0, padded_shape)
    setattr(out, _PADDED_SHAPE, padded_shape)
    return out


def _bias(layer: BetterTransformerBaseLayer, name: str, weight: Tensor) -> Tensor:
    """The declared bias, or zeros for one the original layer lacks (the kernel always adds one)."""
    bias = getattr(layer, name)
    if bias is not None:
        return bias
    cache = layer.__dict__.setdefault("_bt_zero_biases", {})
    key = (name, weight.device, weight.dtype)
    if key not in cache:
        cache[key] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return cache[key]


def unnest(hidden_states: Tensor) -> tuple[Tensor, MaskLayout]:
    """The padded batch an earlier fused layer nested, and its key padding (rows keep their real tokens)."""
    padded_shape = getattr(hidden_states, _PADDED_SHAPE)
    lengths = torch.tensor([row.shape[0] for row in hidden_states.unbind()], device=hidden_states.device)
    padded = hidden_states.to_padded_tensor(0.0, padded_shape)
    key_keep = torch.arange(padded_shape[1], device=hidden_states.device)[None, :] < lengths[:, None]
    if bool(key_keep.all()):
        return padded, NO_MASK
    return padded, MaskLayout(key_keep=key_keep, attend=key_keep[:, None, None, :], is_key_padding=True)


def clamp_float16(hidden_states: Tensor, *, always: bool) -> Tensor:
    """The float16 clamp many encoder layers end with (BART's family, Whisper, Speech2Text), on whatever
    a strategy hands back: a padded batch, packed tokens or the fused path's nested batch.

    ``always``: clamp every float16 output to ``max - 1000`` (pre-norm BART layers, Whisper); otherwise only
    when some value is not finite (post-norm BART layers). Other dtypes are returned as they are. The check
    for non-finite values sees what the strategy computed: real tokens only on the packed and fused paths.
    """
    if hidden_states.dtype != torch.float16:
        return hidden_states
    top = torch.finfo(torch.float16).max
    if not hidden_states.is_nested:
        if always:
            return torch.clamp(hidden_states, min=-(top - 1000), max=top - 1000)
        bound = torch.where(torch.isfinite(hidden_states).all(), top, top - 1000).to(torch.float16)
        return torch.clamp(hidden_states, min=-bound, max=bound)  # finite values never exceed ``top``: no sync
    # Nested tensors have no clamp: clamp each row, and keep what the next fused layer reads off the batch.
    rows = hidden_states.unbind()
    finite = always or bool(torch.stack([torch.isfinite(row).all() for row in rows]).all())
    bound = top - 1000 if always or not finite else top
    clamped = torch.nested.as_nested_tensor([torch.clamp(row, min=-bound, max=bound) for row in rows])
    clamped.__dict__.update(hidden_states.__dict__)  # the fused path's bookkeeping (its padded shape) travels on
    return clamped

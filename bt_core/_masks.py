"""Reading the attention masks transformers hands its encoder layers.

A layer may receive None, a 2-D keep mask, a 3-D or 4-D bool keep mask, an additive float mask
(0 / dtype-min or 0 / -10000) or an integer mask. Everything here turns that into one picture:
which keys each row may attend to, and whether that is plain key padding (so the padding can be
dropped from the compute) or something richer, such as a causal mask, that must be applied whole.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import BetterTransformerError


@dataclass(frozen=True)
class MaskLayout:
    """What an attention mask means for one batch.

    ``key_keep`` is ``(batch, seq_len)`` bool, True on real tokens, when the mask is plain key
    padding with at least one padded token; None when nothing is padded. ``attend`` is a bool
    mask broadcastable to ``(batch, heads, seq_len, seq_len)`` (True = may attend), None when
    every token may attend to every token.
    """

    key_keep: Tensor | None
    attend: Tensor | None
    is_key_padding: bool
    #: Some row's first position is padding (left padding): a head reading position 0 reads a padded
    #: position, whose hidden state the original computes.
    pads_first_position: bool = False

    @property
    def has_padding(self) -> bool:
        return self.key_keep is not None


NO_MASK = MaskLayout(key_keep=None, attend=None, is_key_padding=True)


def to_keep_mask(mask: Tensor) -> Tensor:
    """A bool mask of the same shape, True where attention is allowed."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        return mask != 0
    # A float mask is additive (0 keeps, a large negative drops) unless it is a 0/1 keep mask.
    if bool((mask < 0).any()) or not bool((mask == 1).any()):
        return mask > -1.0
    return mask > 0.5


def read_mask(mask: Tensor | None, batch: int, seq_len: int) -> MaskLayout:
    """Classify ``mask`` for a ``(batch, seq_len, hidden)`` input."""
    if mask is None:
        return NO_MASK
    keep = to_keep_mask(mask)
    if keep.dim() == 2:
        attend = keep[:, None, None, :]
    elif keep.dim() == 3:
        attend = keep[:, None, :, :]
    elif keep.dim() == 4:
        attend = keep
    else:
        raise BetterTransformerError(
            f"attention mask of shape {tuple(mask.shape)} is not understood: pass a (batch, seq_len) "
            "mask, or the 3-D/4-D mask transformers builds from it."
        )
    if attend.shape[0] not in (1, batch) or attend.shape[-1] != seq_len:
        raise BetterTransformerError(
            f"attention mask of shape {tuple(mask.shape)} does not fit hidden states of batch {batch} "
            f"and length {seq_len}: pass the mask of this batch."
        )
    attend = attend.expand(batch, *attend.shape[1:])
    # The keys some query may attend to are the real tokens of a padding mask.
    key_keep = attend.any(dim=2).all(dim=1) if attend.shape[2] > 1 else attend[:, :, 0, :].all(dim=1)
    # It is plain key padding when every real query row allows exactly the real keys; rows of
    # padded queries are free, since their outputs are never read.
    rows_match = attend == key_keep[:, None, None, :]
    if attend.shape[2] > 1:
        rows_match = rows_match | ~key_keep[:, None, :, None]
    if not bool(rows_match.all()):
        return MaskLayout(key_keep=None, attend=attend, is_key_padding=False)
    if bool(key_keep.all()):
        return NO_MASK
    return MaskLayout(
        key_keep=key_keep,
        attend=key_keep[:, None, None, :],
        is_key_padding=True,
        pads_first_position=not bool(key_keep[:, 0].all()),
    )


_held = threading.local()


def stack_layout(mask: Tensor | None, batch: int, seq_len: int, *, first: bool, last: bool) -> MaskLayout:
    """:func:`read_mask` once per forward of a layer stack, for the layers that run the padded batch.

    Reading a mask asks the device a few questions (is anything padded, is it plain key padding), and
    on a GPU each answer stalls the launch queue: once per layer, that was 37 waits per BERT-base call.
    The first layer reads it; later layers handed the same mask object (transformers passes one mask to
    every layer) reuse that reading; the last layer lets it go, so no reading outlives its forward.
    """
    if mask is None:
        return NO_MASK
    held = getattr(_held, "layout", None)
    key = (batch, seq_len, None if mask.is_inference() else mask._version)  # inference tensors have no version
    if not first and held is not None and held[0]() is mask and held[1] == key:
        layout = held[2]
    else:
        layout = read_mask(mask, batch, seq_len)
    _held.layout = None if last else (weakref.ref(mask), key, layout)
    return layout


def forget_layout() -> None:
    """Drop the held reading (the last layer of a stack that ran on packed or nested tokens)."""
    _held.layout = None


def traceable_layout(mask: Tensor | None, batch: int, seq_len: int) -> MaskLayout:
    """``mask`` as a 4-D bool keep mask with no branch on its values, for tracers and exporters.

    ``read_mask`` inspects the values (is anything padded? is it plain key padding?) and a tracer
    would freeze those answers into the program; here the mask stays a tensor input of every op, so
    the traced program is right for any padding layout.
    """
    if mask is None:
        return NO_MASK
    if mask.dtype == torch.bool:
        keep = mask
    elif not mask.is_floating_point():
        keep = mask != 0
    else:  # additive (0 / large negative) unless it is a 0/1 keep mask, decided by ops, not by Python
        additive = (mask < 0).any() | ~(mask == 1).any()
        keep = torch.where(additive, mask > -1.0, mask > 0.5)
    if keep.dim() == 2:
        keep = keep[:, None, None, :]
    elif keep.dim() == 3:
        keep = keep[:, None, :, :]
    return MaskLayout(key_keep=None, attend=keep, is_key_padding=False)


def is_right_padded(key_keep: Tensor) -> bool:
    """True when every row is real tokens followed by padding, each row with one real token at least."""
    lengths = key_keep.sum(dim=1)
    if bool((lengths == 0).any()):
        return False
    positions = torch.arange(key_keep.shape[1], device=key_keep.device)
    return bool(torch.equal(key_keep, positions[None, :] < lengths[:, None]))


def add_causal(mask: Tensor | None, seq_len: int, device: torch.device) -> Tensor:
    """``mask`` (any form above, or None) restricted to causal attention, as a 4-D bool keep mask.

    transformers' SDPA path may hand a causal layer no mask and ``is_causal=True`` instead; the
    fused and packed strategies know nothing of causality, so the causal part is made explicit.
    """
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()[None, None]
    if mask is None:
        return causal
    keep = to_keep_mask(mask)
    if keep.dim() == 2:
        keep = keep[:, None, None, :]
    elif keep.dim() == 3:
        keep = keep[:, None]
    return keep & causal

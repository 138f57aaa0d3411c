"""Attention of a packed batch's short rows in one batched call.

The packed strategy attends each row over its own real tokens (one SDPA call per run of equal-length
rows). On short rows that costs more in calls than in arithmetic: torch's CPU flash kernel spends
tens of microseconds per call and a few per (row, head) block whatever the length, so a batch of 32
rows of 8-22 tokens spent more time in attention than OpenVINO's fused attention over the same batch
*with* its padding. Rows up to :data:`SHORT_ROW_TOKENS` tokens are therefore laid out padded to the
longest of them and attended together: one scores GEMM, one softmax, one GEMM with the values, keys
past a row's length at -inf. The packed token order (what a forward hook between layers sees) is
unchanged: tokens are copied into the padded layout and back.

The layout is gathered, not scattered: each padded slot reads a packed token (a slot past a row's end
reads the row's last token, a finite value its key mask hides), so no buffer is zeroed, and every copy
moves whole token rows. Scattering each head into a zeroed layout instead gave the same results, but the
batched call lost to one SDPA call per run under bfloat16 autocast, where it now wins (``SHORT_ROW_TOKENS``).

The arithmetic follows SDPA's CPU flash kernel, which the original runs on the same rows: for float16
and bfloat16 inputs, scores, exponentials and their sum in float32, the exponentials rounded to the
input dtype for the GEMM with the values, accumulated in float32 and divided by the sum at the end.
(Computing it all in float32 with one softmax is faster, but the error it adds, small against full
precision, moved the outputs of small models under bfloat16 autocast up to 1.4x autocast's own error
away from the original's.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ._packing import Packing

__all__ = ["SHORT_ROW_TOKENS", "ShortRows", "attend_short_rows"]

#: Rows of at most this many tokens are attended in one batched call. MiniLM's sorted texts, model alone, paired
#: against OpenVINO (``benchmarks/texts_model_only.py --short-rows N``): fp32 1.02-1.09x at 32, 1.07x at 48 and at 64,
#: 0.97-0.98x with one call per run (N = 0). Since the layout is gathered, bt against itself in one process
#: (``--against-short-rows N``): under bf16 autocast 1.04x at 32 over N = 0, 0.98x at 64 against 32; fp32 1.00x at 32
#: over 0. The padded scores grow quadratically with the longest short row.
SHORT_ROW_TOKENS = 32

#: The padded layout's least length (see ``ShortRows``).
MIN_KEYS = 16

_REDUCED = (torch.float16, torch.bfloat16)


class ShortRows:
    """Where a packing's short rows sit, in the packed matrix and in their padded layout.

    ``gather``: for each slot of the ``(rows * length)`` padded layout, the packed token it reads;
    ``slots``: the slot of each short-row token, in packed order; ``tokens``: the packed index of each
    short-row token (None when every token is in a short row, whose packed order is then already
    theirs); ``key_keep``: ``(rows, length)``, True on a key a row attends to.
    """

    def __init__(self, packing: Packing, runs: list[tuple[int, int, int, list[int], bool]]) -> None:
        device = packing.index.device
        lengths = [length for _, rows, length, _, _ in runs for _ in range(rows)]
        # At least 16 keys: torch's CPU softmax is scalar over a last dimension under 16 (9 ns an element
        # against 0.6 ns at 16, measured on AVX-512); the extra keys are at -inf.
        self.rows, self.length = len(lengths), max(*lengths, MIN_KEYS)
        starts = torch.tensor([start + r * length for start, rows, length, _, _ in runs for r in range(rows)])
        query_only = [flag for _, rows, _, _, flag in runs for _ in range(rows)]
        positions = torch.arange(self.length)
        row_lengths = torch.tensor(lengths)[:, None]
        real = positions[None, :] < row_lengths  # (rows, length): a token's slot
        # Past its end a row's slots read its last token: a real key, finite, and hidden by ``key_keep``.
        self.gather = (starts[:, None] + torch.minimum(positions[None, :], row_lengths - 1)).reshape(-1).to(device)
        self.slots = real.reshape(-1).nonzero().squeeze(1).to(device)
        self.tokens: Tensor | None = None
        if sum(lengths) != packing.tokens:
            self.tokens = self.gather.index_select(0, self.slots)  # a real slot reads its own token
        # A left-padded row's position 0 is a query only: no key attends to it (see Packing).
        keep = real.clone()
        keep[:, 0] &= ~torch.tensor(query_only)
        self.key_keep = keep.to(device)
        self._bias: dict[tuple[int, torch.dtype], Tensor] = {}

    def key_bias(self, heads: int, dtype: torch.dtype) -> Tensor:
        """``(heads * rows, 1, length)``, head-major: 0 on the keys each row attends to, -inf elsewhere."""
        if (heads, dtype) not in self._bias:
            bias = torch.zeros(self.key_keep.shape, dtype=dtype, device=self.key_keep.device)
            bias.masked_fill_(~self.key_keep, float("-inf"))
            self._bias[heads, dtype] = bias.repeat(heads, 1)[:, None, :]
        return self._bias[heads, dtype]


def attend_short_rows(
    short: ShortRows,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None,
    expand_kv: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
) -> Tensor:
    """Attention of the short rows: q ``(tokens, heads, head_dim)``, k/v ``(tokens, kv_heads, head_dim)``
    of the whole packed batch -> ``(short tokens, heads * head_dim)``, in ``short.tokens``' order.
    ``expand_kv(k, v)`` repeats grouped key/value heads along axis 0.

    The padded layout is head-major, ``(heads, rows * length, head_dim)``: each (head, row) block is
    contiguous, so the GEMMs take it as ``(heads * rows)`` matrices without another copy."""
    rows, length = short.rows, short.length
    dtype = _sdpa_input_dtype(q)
    accumulate = torch.float32 if dtype in _REDUCED else dtype

    def padded(t: Tensor) -> Tensor:  # (tokens, heads, dim) -> (heads, rows * length, dim), in ``accumulate``
        picked = t.index_select(0, short.gather).to(dtype)  # whole token rows; SDPA's input rounding
        return _contiguous(picked.transpose(0, 1), accumulate)

    pq, (pk, pv) = padded(q), expand_kv(padded(k), padded(v))
    heads, head_dim = pq.shape[0], pq.shape[2]
    with torch.autocast(q.device.type, enabled=False):  # the dtypes below are SDPA's, not autocast's
        queries, keys, values = (t.view(heads * rows, length, head_dim) for t in (pq, pk, pv))
        scores = torch.baddbmm(
            short.key_bias(heads, accumulate), queries, keys.transpose(1, 2),
            alpha=head_dim**-0.5 if scale is None else scale,
        )  # fmt: skip
        if dtype == accumulate:
            context = torch.bmm(scores.softmax(dim=-1), values)
        else:
            # As the flash kernel in float16/bfloat16: the exponentials rounded to the input dtype for the
            # GEMM with the values, and the sum of the unrounded ones dividing the float32 result. (Rounding
            # softmax's normalised weights instead measured a larger error than autocast's own.)
            weights = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
            total = weights.sum(dim=-1, keepdim=True)
            context = torch.bmm(weights.to(dtype).to(accumulate), values).div_(total)
    # Back to token-major in the input dtype (one pass), then each real token's row.
    token_major = _contiguous(context.view(heads, rows * length, head_dim).transpose(0, 1), dtype)
    return token_major.index_select(0, short.slots).view(-1, heads * head_dim)


def _contiguous(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` as a new contiguous tensor in ``dtype``: transposed and cast in one pass."""
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)


def _sdpa_input_dtype(q: Tensor) -> torch.dtype:
    """The dtype SDPA computes ``q`` in: autocast casts its floating inputs (float64 aside) to the
    autocast dtype, e.g. a query that rotary positions promoted to float32."""
    device = q.device.type
    if torch.is_autocast_enabled(device) and q.is_floating_point() and q.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return q.dtype

"""The packed strategy: real tokens only, handed from layer to layer as :class:`PackedTokens`.

The first converted layer gathers the real tokens of the padded batch into one ``(tokens, hidden)``
matrix; every following layer receives that matrix itself, as a tensor that carries its own packing
(where each token belongs), so nothing is remembered between calls and nothing is recognised by
identity or shape; the last layer scatters the tokens back into the padded shape.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._masks import MaskLayout
from ._math import expand_kv, layer_math, rotary_per_position, rotate, score_mask, window_keep
from ._short_rows import SHORT_ROW_TOKENS, ShortRows, attend_short_rows

if TYPE_CHECKING:
    from .layer import BetterTransformerBaseLayer, LayerCall

__all__ = ["PackedTokens"]


class Packing:
    """Where the real tokens of a padded batch live once gathered into one ``(tokens, hidden)`` matrix.

    Gathering in row-major order keeps each row's real tokens together and in order, whatever the
    padding layout (right, left, holes in the middle), so a row is one contiguous slice of the packed
    matrix and its attention needs no padding mask. ``runs`` merges neighbouring rows of the same
    length into one batched attention call: ``(start, rows, length, batch_rows)``.
    """

    def __init__(self, layout: MaskLayout, padded_shape: tuple[int, ...]) -> None:
        key_keep = layout.key_keep
        assert key_keep is not None
        self.layout = layout
        self.padded_shape = padded_shape
        taken = key_keep
        lengths = key_keep.sum(dim=1)
        #: Rows whose position 0 is padding (left padding) also carry that position as a query that no
        #: key attends to: heads read position 0, and there the original computes a padded token's state.
        self.first_is_query_only = (~key_keep[:, 0] & (lengths > 0)).tolist() if layout.pads_first_position else None
        if self.first_is_query_only is not None:
            taken = key_keep.clone()
            taken[:, 0] |= lengths > 0
        self.index = taken.reshape(-1).nonzero().squeeze(1)
        rows = taken.sum(dim=1).tolist()
        self.tokens = int(sum(rows))
        extra = self.first_is_query_only or [False] * len(rows)
        #: (start, rows, length, batch_rows, first_is_query_only)
        self.runs: list[tuple[int, int, int, list[int], bool]] = []
        start = 0
        for row, (length, query_only) in enumerate(zip(rows, extra, strict=True)):
            previous = self.runs[-1] if self.runs else None
            if length and previous and previous[2] == length and previous[4] == query_only:
                first, count, _, batch_rows, _ = previous
                self.runs[-1] = (first, count + 1, length, [*batch_rows, row], query_only)
            elif length:
                self.runs.append((start, 1, length, [row], query_only))
            start += length

    @functools.cached_property
    def short_rows(self) -> ShortRows | None:
        """The rows of at most ``SHORT_ROW_TOKENS`` tokens, attended in one batched call (see
        ``_short_rows``); None when there are fewer than two."""
        runs = [run for run in self.runs if run[2] <= SHORT_ROW_TOKENS]
        return ShortRows(self, runs) if sum(run[1] for run in runs) > 1 else None

    @functools.cached_property
    def long_runs(self) -> list[tuple[int, int, int, list[int], bool]]:
        """The runs ``short_rows`` leaves to one SDPA call each (every run when it is None)."""
        return self.runs if self.short_rows is None else [run for run in self.runs if run[2] > SHORT_ROW_TOKENS]

    @property
    def positions(self) -> Tensor:
        """Each packed token's position in its row of the padded batch."""
        return self.index % self.padded_shape[1]

    def pack(self, hidden_states: Tensor) -> Tensor:
        return hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, self.index)

    def unpack(self, tokens: Tensor) -> Tensor:
        batch, seq_len, _ = self.padded_shape
        out = tokens.new_zeros(batch * seq_len, tokens.shape[-1])
        return out.index_copy_(0, self.index, tokens).view(batch, seq_len, tokens.shape[-1])


class PackedTokens(Tensor):
    """The real tokens of a padded batch as one ``(tokens, hidden)`` matrix, as a converted layer hands
    them to the next; ``padded()`` gives the ``(batch, seq, hidden)`` tensor (zeros at padding).

    A forward hook on a converted layer other than the last one sees this. An op on it that keeps one
    row per token (an elementwise op an encoder applies between layers) keeps the packing; any other
    op gives a plain tensor.
    """

    packing: Packing

    @staticmethod
    def wrap(tokens: Tensor, packing: Packing) -> PackedTokens:
        packed = tokens.as_subclass(PackedTokens)
        packed.packing = packing
        return packed

    def plain(self) -> Tensor:
        """The same memory as a plain tensor."""
        with torch._C.DisableTorchFunctionSubclass():
            return self.as_subclass(Tensor)

    def padded(self) -> Tensor:
        """The ``(batch, seq, hidden)`` batch these tokens came from, zeros at padded positions."""
        return self.packing.unpack(self.plain())

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        packing = next((a.packing for a in args if isinstance(a, PackedTokens) and hasattr(a, "packing")), None)
        if packing is None or func in (Tensor.as_subclass,):
            return out
        if isinstance(out, Tensor) and not isinstance(out, PackedTokens) and out.dim() == 2:
            if out.shape[0] == packing.tokens and not out.is_nested:
                return PackedTokens.wrap(out, packing)
        return out


def packed(layer: BetterTransformerBaseLayer, call: LayerCall, layout: MaskLayout, *, last: bool) -> Tensor:
    """Real tokens only. The first layer gathers them; the following ones receive :class:`PackedTokens`
    and skip the mask and the gather/scatter (~5% of a BERT-base layer at 50% padding when done per
    layer); the last layer scatters back into the padded shape."""
    hidden_states = call.hidden_states
    if isinstance(hidden_states, PackedTokens):
        packing = hidden_states.packing
        tokens = hidden_states.plain()
    else:
        packing = Packing(layout, tuple(hidden_states.shape))
        tokens = packing.pack(hidden_states)
    out = layer_math(layer, tokens, _row_attention(layer, packing, call), onednn=True)
    return packing.unpack(out) if last else PackedTokens.wrap(out, packing)


def _row_attention(layer: BetterTransformerBaseLayer, packing: Packing, call: LayerCall) -> Any:
    """Attention of every row over its own real tokens only, on packed q/k/v.

    Exact: a key-padding mask gives padded keys zero weight, which is attention over the real keys;
    padded queries are never read. The work is the sum of squared row lengths instead of
    ``batch * seq_len**2``: SDPA's CPU flash kernel over BERT-base rows (16 rows of 128 tokens, lengths
    spread uniformly) took 6.3 ms a layer per row at 50% padding against 16.0 ms on the masked padded
    batch, 2.5 ms against 15.3 ms at 75% (1 thread, medians of 7). Per-row calls cost ~20 us each, so
    rows of at most ``SHORT_ROW_TOKENS`` tokens are attended together in one call (``_short_rows``).
    A score bias is sliced to each row's real positions; a window is measured in padded positions (both
    keep one call per run).
    """
    batch, seq_len, _ = packing.padded_shape
    needs_positions = call.score_bias is not None or layer.attention_window is not None
    positions = packing.positions if needs_positions else None
    cos = sin = None
    if call.rotary is not None:
        cos, sin = (t.reshape(batch * seq_len, -1).index_select(0, packing.index)[:, None, :]
                    for t in rotary_per_position(call.rotary, batch, seq_len))  # fmt: skip

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if cos is not None and sin is not None:
            q, k = rotate(q, cos, sin, str(layer.rotary)), rotate(k, cos, sin, str(layer.rotary))
        heads, head_dim = q.shape[-2], q.shape[-1]
        short = packing.short_rows if positions is None else None  # a bias or window: every row its own call
        runs = packing.runs if short is None else packing.long_runs
        contexts = []
        for start, rows, length, batch_rows, query_only in runs:
            stop = start + rows * length
            rq, rk, rv = (t[start:stop].unflatten(0, (rows, length)).transpose(1, 2) for t in (q, k, v))
            rk, rv = expand_kv(layer, rk, rv, head_axis=1)
            keep = _real_keys(length, q.device) if query_only else None
            bias = None
            if positions is not None:
                row_positions = positions[start:stop].view(rows, length)
                if layer.attention_window is not None:
                    window = window_keep(row_positions, layer.attention_window)[:, None]
                    keep = window if keep is None else keep & window
                bias = _row_bias(call.score_bias, batch_rows, row_positions) if call.score_bias is not None else None
            mask = score_mask(keep, bias, rq.dtype)
            context = F.scaled_dot_product_attention(rq, rk, rv, attn_mask=mask, scale=layer.score_scale)
            # SDPA's CPU kernel lays its output out as its query, (rows, length, heads, head_dim) here, so
            # this is a view; reshape copies only where a kernel did not.
            contexts.append(context.transpose(1, 2).reshape(rows * length, heads * head_dim))
        if short is not None:
            short_context = attend_short_rows(
                short, q, k, v, layer.score_scale, lambda k, v: expand_kv(layer, k, v, head_axis=0)
            )
            if short.tokens is None:  # every row is short: already in packed order
                return short_context
            out = short_context.new_empty(packing.tokens, heads * head_dim)
            for (start, rows, length, _, _), context in zip(runs, contexts, strict=True):
                out[start : start + rows * length] = context
            return out.index_copy_(0, short.tokens, short_context)
        # One concatenation of contiguous blocks, not one copy per run: a single parallel region, which
        # matters on a busy CPU where every region waits for its slowest thread. One run needs no copy.
        if len(contexts) == 1:
            return contexts[0]
        return torch.cat(contexts) if contexts else q.new_empty(0, heads * head_dim)

    return attend


def _real_keys(length: int, device: torch.device) -> Tensor:
    """Keys of a run whose first token is a padded position 0 kept as a query only."""
    keep = torch.ones(1, 1, 1, length, dtype=torch.bool, device=device)
    keep[..., 0] = False
    return keep


def _row_bias(bias: Tensor, batch_rows: list[int], positions: Tensor) -> Tensor:
    """``bias`` ``(batch|1, heads|1, seq, seq)`` at each row's real positions: ``(rows, heads|1, length, length)``."""
    rows = torch.tensor(batch_rows if bias.shape[0] > 1 else [0] * len(batch_rows), device=bias.device)
    picked = bias[rows[:, None, None], :, positions[:, :, None], positions[:, None, :]]  # (rows, L, L, heads)
    return picked.permute(0, 3, 1, 2)

"""Rows of similar length attended together: fewer attention calls for the packed strategy.

Attending each row over its own tokens does the least arithmetic, but costs one SDPA call (one
parallel region) per distinct row length, per layer. On a CPU another process keeps busy, every
region waits for its slowest thread, and a batch of 16-32 rows of distinct lengths spends more time
waiting than computing. So rows whose lengths are close share one call, padded to the longest of
them with the padded keys masked: exact (a masked key has zero weight) for a bounded amount of
extra arithmetic per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BucketPlan", "plan_buckets"]

#: A row joins a bucket padded to ``L`` tokens while ``L**2 - length**2`` (query-key pairs computed in
#: vain) is at most this: a BERT-base head pair costs ~60 ns on one AVX-512 core, so ~4096 pairs is
#: about the ~20 us an extra SDPA call costs on a quiet CPU, and far less than one on a busy one.
WASTED_PAIRS_PER_ROW = 4096


@dataclass(frozen=True)
class Bucket:
    """Rows attended in one call: ``gather`` picks their tokens (padded slots repeat a row's last
    token), ``keep`` ``(rows, 1, 1, length)`` marks the keys each row attends to."""

    rows: int
    length: int
    gather: Tensor
    keep: Tensor


@dataclass(frozen=True)
class BucketPlan:
    """The buckets of one packing, and ``back``: each packed token's slot in their concatenated output."""

    buckets: tuple[Bucket, ...]
    back: Tensor


def plan_buckets(
    runs: list[tuple[int, int, int, list[int], bool]], device: torch.device
) -> BucketPlan | None:
    """Group the rows of ``runs`` (``(start, rows, length, batch_rows, first_is_query_only)``, as
    :class:`~bt_core._packing.Packing` has them) into buckets; None when that saves no call."""
    rows = [
        (start + index * length, length, query_only)
        for start, count, length, _, query_only in runs
        for index in range(count)
    ]
    rows.sort(key=lambda row: -row[1])  # stable: equal lengths keep their packed order
    groups: list[list[tuple[int, int, bool]]] = []
    for row in rows:
        if groups and groups[-1][0][1] ** 2 - row[1] ** 2 <= WASTED_PAIRS_PER_ROW:
            groups[-1].append(row)
        else:
            groups.append([row])
    if len(groups) >= len(runs):
        return None
    buckets = []
    back = torch.empty(sum(length for _, length, _ in rows), dtype=torch.long)
    slot = 0
    for group in groups:
        padded = group[0][1]
        keys = torch.arange(padded)
        gather, keep = [], []
        for start, length, query_only in group:
            back[start : start + length] = keys[:length] + slot
            gather.append(keys.clamp(max=length - 1) + start)  # padded slots repeat the row's last token
            keep.append((keys < length) & (keys > 0) if query_only else keys < length)
            slot += padded
        buckets.append(
            Bucket(len(group), padded, torch.cat(gather).to(device), torch.stack(keep).to(device)[:, None, None, :])
        )
    return BucketPlan(tuple(buckets), back.to(device))

"""A deterministic synthetic corpus, so the test and the benchmark need no data set download."""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["synthetic_texts", "write_corpus"]

_WORDS = (
    "ray actor batch encoder layer token padding model vector search index query document cluster node "
    "thread kernel fused attention embedding sentence corpus parquet shard worker retry restart memory "
    "the a of to and in is on for with fast slow exact small large every each one two many"
).split()


def synthetic_texts(n: int, *, seed: int = 0) -> list[str]:
    """``n`` sentences of 3 to 32 words, so batches mix short and long rows as real corpora do."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(_WORDS, k=rng.randint(3, 32))) + "." for _ in range(n)]


def write_corpus(path: Path, n: int, *, seed: int = 0, rows_per_file: int = 250) -> list[str]:
    """Write ``n`` rows (``id`` int64, ``text``) as a folder of Parquet files; returns the texts by id.

    Several files give Ray several read blocks, as a real corpus would.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = synthetic_texts(n, seed=seed)
    path.mkdir(parents=True, exist_ok=False)
    for start in range(0, n, rows_per_file):
        chunk = texts[start : start + rows_per_file]
        table = pa.table({"id": pa.array(range(start, start + len(chunk)), pa.int64()), "text": chunk})
        pq.write_table(table, path / f"part-{start // rows_per_file:05d}.parquet")
    return texts

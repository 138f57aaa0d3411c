"""The Ray job on a local 2-CPU runtime: every id once, the single-process embeddings, and an actor
killed mid-run costs nothing (Ray restarts it and retries its batches)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from ray_batch_embedding.corpus import write_corpus
from ray_batch_embedding.job import Embedder, default_model_dir, main, run

N_TEXTS = 2000
MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """2,000 rows as eight Parquet files, so Ray has several blocks to spread over the actors."""
    path = tmp_path_factory.mktemp("corpus") / "texts"
    return path, write_corpus(path, N_TEXTS)


@pytest.fixture(scope="module")
def reference(corpus: tuple[Path, list[str]]) -> np.ndarray:
    """The single-process run: the original sentence-transformers model, not converted, in this process."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)
    return model.encode(corpus[1], batch_size=64, convert_to_numpy=True)


@pytest.fixture(scope="module")
def ray_runtime(reference: np.ndarray) -> Iterator[None]:
    """A local Ray runtime with 2 CPUs, shut down at the end whatever happened.

    Depends on ``reference`` so that the in-process baseline runs before the actors compete for the CPUs.
    """
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def _read_output(path: Path) -> tuple[list[Any], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    assert pa.types.is_fixed_size_list(column.type), column.type
    return table.column("id").to_pylist(), column.flatten().to_numpy().reshape(len(table), column.type.list_size)


def _assert_complete_and_equal(output: Path, reference: np.ndarray) -> None:
    ids, vectors = _read_output(output)
    counts = Counter(ids)
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted(set(range(len(reference))) - counts.keys())
    assert not duplicated and not missing, f"duplicated ids {duplicated[:10]}, missing ids {missing[:10]}"
    assert len(ids) == len(reference)
    expected = reference[np.asarray(ids)]
    cosine = (vectors * expected).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= MIN_COSINE, f"min cosine {cosine.min():.7f} at id {ids[int(cosine.argmin())]}"


def test_every_id_comes_back_once_with_the_single_process_embedding(
    ray_runtime: None, corpus: tuple[Path, list[str]], reference: np.ndarray, tmp_path: Path
) -> None:
    run(corpus[0], tmp_path / "out", default_model_dir(), actors=2, threads_per_actor=1, batch_size=64)
    _assert_complete_and_equal(tmp_path / "out", reference)


def _embedder_killed_once(marker: Path, starts: Path) -> type[Embedder]:
    """An Embedder whose first actor to reach its second batch is SIGKILLed, as the OOM killer would.

    Defined in a function so that Ray pickles the class by value: the workers need not import this test.
    """

    class KilledOnce(Embedder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            (starts / str(os.getpid())).touch()
            self.calls = 0

        def __call__(self, batch: pa.Table) -> pa.Table:
            self.calls += 1
            if self.calls == 2:
                try:
                    marker.rename(marker.with_suffix(".taken"))  # atomic: only one actor ever wins it
                except FileNotFoundError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    return KilledOnce


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(
    ray_runtime: None, corpus: tuple[Path, list[str]], reference: np.ndarray, tmp_path: Path
) -> None:
    marker, starts = tmp_path / "kill.marker", tmp_path / "starts"
    marker.touch()
    starts.mkdir()
    embedder = _embedder_killed_once(marker, starts)
    run(corpus[0], tmp_path / "out", default_model_dir(), actors=2, threads_per_actor=1, batch_size=64,
        embedder=embedder)
    assert not marker.exists() and marker.with_suffix(".taken").exists(), "no actor was killed"
    assert len(list(starts.iterdir())) >= 3, "expected 2 actors plus a restart of the killed one"
    _assert_complete_and_equal(tmp_path / "out", reference)


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--input", "{tmp}/absent.parquet"], "input '{tmp}/absent.parquet' not found: pass --input"),
        (["--input", "{corpus}", "--model", "{tmp}/no-model"], "model directory '{tmp}/no-model' not found"),
    ],
)
def test_a_missing_input_or_model_is_one_line_naming_it(
    args: list[str], culprit: str, corpus: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill = {"tmp": str(tmp_path), "corpus": str(corpus[0])}
    code = main([a.format(**fill) for a in args] + ["--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and culprit.format(**fill) in err, err

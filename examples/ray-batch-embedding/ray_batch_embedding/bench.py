"""Throughput of one process against the Ray job, on the same synthetic corpus and the same converted model.

    python -m ray_batch_embedding.bench --texts 2000

Prints texts per second for: one process with ``--threads`` torch threads (default: all the CPUs
Ray would use), and the Ray job with ``--actors`` actors x ``--threads-per-actor`` threads, timed
end to end (actor start, model load and conversion included, as a user waits for them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ray_batch_embedding.corpus import write_corpus
from ray_batch_embedding.job import default_model_dir, embed_in_process, run


def main(argv: Sequence[str] | None = None) -> int:
    """Run both measurements and print one line each."""
    p = argparse.ArgumentParser(prog="python -m ray_batch_embedding.bench", description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--threads-per-actor", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the single process (default: actors x threads per actor)")
    p.add_argument("--model", type=Path, default=None)
    args = p.parse_args(argv)
    model = args.model or default_model_dir()
    cpus = args.actors * args.threads_per_actor
    threads = args.threads or cpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "texts"
        texts = write_corpus(corpus, args.texts)

        start = time.perf_counter()
        embed_in_process(texts, model, threads=threads, batch_size=32)  # load + convert + encode, as the job does
        single = time.perf_counter() - start
        print(f"1 process x {threads} threads: {args.texts / single:7.1f} texts/s ({single:.1f} s, load included)")

        import ray

        ray.init(num_cpus=cpus, include_dashboard=False)
        try:
            start = time.perf_counter()
            run(corpus, Path(tmp) / "out", model, actors=args.actors, threads_per_actor=args.threads_per_actor)
            spread = time.perf_counter() - start
        finally:
            ray.shutdown()
        print(
            f"{args.actors} actors x {args.threads_per_actor} thread(s): {args.texts / spread:7.1f} texts/s "
            f"({spread:.1f} s, actor start, load and write included; Ray on {cpus} CPUs of {os.cpu_count()})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

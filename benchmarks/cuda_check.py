"""The CUDA checks in one run, for a machine with a GPU (a few minutes on one H200).

1. ``bt doctor``: nested tensors and the fused kernel run on this GPU.
2. ``bt check`` on every model type the installed plugins convert, on the GPU: a right-padded and a
   left-padded batch against the original, in float32 (the engine's choice, and each strategy forced)
   in float16 and bfloat16 (the engine's choice), and float32 models under ``torch.autocast`` to float16 and
   to bfloat16. A forced strategy a layer cannot take is "n/a".
3. The CUDA rows of BENCHMARKS.md: BERT-base, batch 64, length 256, float16, 0% and 50% padding, with
   the engine's choice (``fused`` on padded batches) and with ``packed`` and ``fused`` forced.

Run from the repository root after installing bt and its packs::

    python benchmarks/cuda_check.py [--device cuda] [--out DIR] [--types bert,vit] [--no-bench]

It exits 1 if any check fails. ``--device cpu`` runs the same checks on the CPU (the fused strategy has no
float16 version there).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import sys
import time
from pathlib import Path

from bt_core.cli import main as bt
from bt_core.ops import EXIT_OK, EXIT_UNSUPPORTED
from bt_core.registry import default_registry

#: (label, extra ``bt check`` arguments)
CHECKS = [
    ("fp32 auto", ["--dtype", "float32"]),
    ("fp32 fused", ["--dtype", "float32", "--strategy", "fused"]),
    ("fp32 packed", ["--dtype", "float32", "--strategy", "packed"]),
    ("fp32 dense", ["--dtype", "float32", "--strategy", "dense"]),
    ("fp16 auto", ["--dtype", "float16"]),
    ("bf16 auto", ["--dtype", "bfloat16"]),
    ("fp16 autocast", ["--autocast", "float16"]),
    ("bf16 autocast", ["--autocast", "bfloat16"]),
]
BENCH = ["--model", "bert-base", "--batch", "64", "--length", "256", "--padding", "0,50", "--dtype", "float16"]


def largest_difference(output: str) -> float | None:
    """The largest MAX ABS DIFF a ``bt check`` printed."""
    values = [float(v) for v in re.findall(r"^\S.*?\s{2,}([0-9.eE+-]+|nan|inf)\s{2}", output, flags=re.M)]
    return max(values) if values else None


def run_checks(device: str, types: list[str], log: io.TextIOBase) -> int:
    failures = 0
    print(f"{'MODEL TYPE':<22}" + "".join(f"{label:>15}" for label, _ in CHECKS))
    for model_type in types:
        cells = []
        for label, extra in CHECKS:
            captured_out, captured_err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(captured_out), contextlib.redirect_stderr(captured_err):
                code = bt(["check", model_type, "--device", device, *extra])
            output = captured_out.getvalue() + captured_err.getvalue()
            log.write(f"\n===== {model_type} {label}: exit {code}\n{output}")
            forced = "--strategy" in extra
            if code == EXIT_OK:
                worst = largest_difference(output)
                cells.append("ok" if worst is None else f"ok {worst:.1e}")
            elif code == EXIT_UNSUPPORTED and forced and "was forced, but" in output:
                cells.append("n/a")  # the forced strategy cannot run this layer, and says so
            else:
                failures += 1
                cells.append(f"FAIL({code})")
                print(f"--- {model_type} {label}: exit {code}\n{output.strip()}", file=sys.stderr)
        print(f"{model_type:<22}" + "".join(f"{cell:>15}" for cell in cells), flush=True)
    return failures


def run_benches(device: str, out: Path) -> int:
    failures = 0
    for label, extra in [("auto", []), ("packed", ["--strategy", "packed"]), ("fused", ["--strategy", "fused"])]:
        command = [
            sys.executable,
            "-m",
            "bt_core.cli",
            "bench",
            *BENCH,
            "--device",
            device,
            "--runs",
            "20",
            "--warmup",
            "3",
        ]
        command += [*extra, "--json", str(out / f"cuda-fp16-{label}.json")]
        if label != "auto":
            command.append("--no-eager")
        print(f"\n$ bt {' '.join(command[3:])}", flush=True)
        failures += subprocess.run(command, check=False).returncode != 0
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the logs and JSON (default: .)")
    parser.add_argument("--types", default="", help="comma-separated model types (default: every supported one)")
    parser.add_argument("--no-bench", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    failures = bt(["doctor"]) != EXIT_OK
    types = args.types.split(",") if args.types else sorted(default_registry().supported_model_types())
    with open(args.out / "cuda-check.log", "w") as log:
        failures += run_checks(args.device, types, log)
    if not args.no_bench:
        failures += run_benches(args.device, args.out)
    print(f"\n{failures} failure(s); {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

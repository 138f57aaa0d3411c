"""``bt bench``: a converted model against its unconverted self, in one process.

Every round runs, back to back, the converted model, the same model unconverted with transformers'
default attention (sdpa) and, unless disabled, with eager attention, plus the four projection GEMMs
of one layer on as many rows as the batch has real tokens, which measure the machine's
matrix-multiply rate at the model's shapes at that moment. Medians over the rounds after warm-up give
the table; alternating inside a round keeps slow drifts of a shared machine out of the ratios.

The roofline is the FLOPs of the real (non-padded) tokens only, projections plus attention over each
row's own tokens, divided by that GEMM rate: the time an exact implementation would take if
everything ran as fast as the model's matrix multiplies. ``bt/roofline`` is the measured time over it.

A seq2seq model is timed by its encoder, the part bt converts; ``--generate N`` adds the whole model's
``generate()``, which the encoder's share bounds. Audio rows are counted in encoder frames. The parts:
``_bench_inputs`` (models and batches), ``_bench_audio``, ``_bench_measure`` (timers, GEMM probe),
``_bench_generate`` and ``_bench_table`` (the report).

Importing this module is light (``bt --help`` builds its parser from it): torch and transformers
load inside the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# _load_model and _make_inputs keep their old names here for bt demo, which builds its model and
# batch as bt bench does.
from ._bench_inputs import CONFIGS as _CONFIGS
from ._bench_inputs import encoder_flops, padded_lengths
from ._bench_inputs import load_model as _load_model  # noqa: F401
from ._bench_inputs import make_inputs as _make_inputs  # noqa: F401
from ._bench_run import BenchOptions, run_options
from ._bench_table import format_table

__all__ = ["add_parser", "encoder_flops", "format_table", "padded_lengths", "run_bench"]

DEFAULT_MODEL = "bert-base"
DEFAULT_PADDING = (0.0, 0.25, 0.5, 0.75)
DEFAULT_LENGTH = 128


# -- the command ----------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    shipped = ", ".join(sorted(p.stem for p in _CONFIGS.glob("*.json")))
    parser = subparsers.add_parser(
        "bench",
        help="measure a converted model against its unconverted self",
        description=(
            "Time a model converted by bt against the same model unconverted (transformers' default sdpa "
            "attention, and eager attention), alternating runs in one process; medians after warm-up. "
            "Weights are random: no download."
        ),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a shipped config ({shipped}), a model type (bert, vit, ...), a config JSON file or a local "
        f"checkpoint folder (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--batch", type=int, default=16, help="rows per batch (default: 16)")
    parser.add_argument(
        "--length",
        type=int,
        default=None,
        help=f"padded sequence length, in encoder frames for wav2vec2-style audio (default: {DEFAULT_LENGTH}, or "
        "the longest of --lengths)",
    )
    parser.add_argument(
        "--padding",
        default="0,25,50,75",
        help="padding fractions in percent, comma-separated (default: 0,25,50,75)",
    )
    parser.add_argument(
        "--lengths",
        default=None,
        metavar="SHORTEST-LONGEST",
        help="instead of --padding, one batch whose real row lengths are evenly spread from SHORTEST to LONGEST "
        "(tokens, or encoder frames for audio: 199-799 is 4-16 s of 16 kHz wav2vec2 audio)",
    )
    parser.add_argument(
        "--generate",
        type=int,
        default=None,
        metavar="N",
        help="seq2seq models: also time greedy generate() of N new tokens by the whole model, its encoder "
        "converted vs not, on the same batch, and check both give the same tokens",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall: elapsed time (default); cpu: the process's CPU time, steadier on a shared machine with "
        "--threads 1 (with more threads it also counts threads spinning while they wait)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per padding fraction (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument(
        "--strategy",
        default=None,
        choices=["fused", "packed", "dense", "reference"],
        help="force one execution strategy (default: the engine chooses)",
    )
    parser.add_argument("--no-eager", action="store_true", help="skip the eager-attention baseline")
    parser.add_argument(
        "--compile",
        default=None,
        metavar="BACKEND",
        help="torch.compile every model (original and converted) with this backend, e.g. inductor",
    )
    parser.add_argument(
        "--texts",
        default=None,
        metavar="FILE",
        help="time the model on your own texts (one per line), as loaded, converted by bt and, when installed, "
        "on ONNX Runtime and OpenVINO; --model is then a local sentence-transformers or transformers folder",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="texts per batch with --texts (default: 32)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one call of the converted model per row: the share of its time in projections, "
        "attention, norms, activations, copies (what bt/roofline leaves open)",
    )
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from .errors import BetterTransformerError

    if args.texts is not None:  # the user's model on the user's texts, against the other runtimes
        from .workload import main as workload_main

        return workload_main(args)

    try:
        padding = [float(p) / 100.0 for p in args.padding.split(",") if p.strip()]
    except ValueError:
        print(f"bt bench: --padding takes percentages like 0,25,50,75, not {args.padding!r}", file=sys.stderr)
        return 2
    lengths = None
    if args.lengths is not None:
        shortest, _, longest = args.lengths.partition("-")
        try:
            lengths = (int(shortest), int(longest))
        except ValueError:
            print(f"bt bench: --lengths takes SHORTEST-LONGEST like 199-799, not {args.lengths!r}", file=sys.stderr)
            return 2
    try:
        result = run_bench(
            model=args.model,
            batch=args.batch,
            length=args.length,
            padding=padding,
            lengths=lengths,
            dtype=args.dtype,
            device=args.device,
            threads=args.threads,
            clock=args.clock,
            runs=args.runs,
            warmup=args.warmup,
            strategy=args.strategy,
            eager=not args.no_eager,
            compile_backend=args.compile,
            generate=args.generate,
            profile=args.profile,
            json_path=args.json_path,
            progress=not args.quiet,
        )
    except (BetterTransformerError, ValueError, OSError) as exc:
        print(f"bt bench: {exc}", file=sys.stderr)
        return 1
    print(format_table(result))
    return 0


def run_bench(
    model: str | Any = DEFAULT_MODEL,
    *,
    batch: int = 16,
    length: int | None = None,
    padding: Sequence[float] = DEFAULT_PADDING,
    lengths: tuple[int, int] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int | None = None,
    clock: str = "wall",
    runs: int = 5,
    warmup: int = 1,
    strategy: str | None = None,
    eager: bool = True,
    compile_backend: str | None = None,
    generate: int | None = None,
    profile: bool = False,
    json_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Benchmark ``model`` (a spec as for ``bt bench --model``, or a transformers model) converted vs not.

    ``length`` is the padded length (default 128, or the longest of ``lengths``); ``lengths``
    (shortest, longest) replaces the ``padding`` fractions by one batch of evenly spread real lengths.
    ``generate`` (seq2seq models) also times ``generate()`` of that many new tokens per row.

    Returns a dict with ``machine``, ``settings``, ``conversion`` (seconds, parameter bytes before and
    after) and ``rows`` (one per padding fraction: median seconds of the converted, sdpa and eager
    models, tokens/s, speed-ups, the measured GEMM rate, roofline seconds and ratio, strategies used,
    and with ``generate`` a ``generate`` dict of times, speed-up, the encoder's share and whether the
    tokens are identical); with ``profile``, a ``profile`` dict per row (see ``bt_core._bench_profile``).
    """
    import torch

    def say(message: str) -> None:
        if progress:
            print(f"[bt bench] {message}", file=sys.stderr, flush=True)

    if length is None:
        length = lengths[1] if lengths else DEFAULT_LENGTH
    if runs < 1 or batch < 1 or length < 1:
        raise ValueError("--runs, --batch and --length must be positive")
    if lengths and lengths[1] > length:
        raise ValueError(f"--lengths {lengths[0]}-{lengths[1]} has rows longer than --length {length}")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock {clock!r} is not wall or cpu")
    if generate is not None and (generate < 1 or compile_backend):
        raise ValueError(
            "--generate takes a positive number of new tokens and runs the models uncompiled: no --compile"
        )
    options = BenchOptions(
        model_spec=model if isinstance(model, str) else type(model).__name__,
        batch=batch,
        length=length,
        padding=tuple(padding),
        lengths=tuple(lengths) if lengths else None,  # type: ignore[arg-type]
        dtype=dtype,
        device=device,
        threads=threads,
        clock=clock,
        runs=runs,
        warmup=warmup,
        strategy=strategy,
        eager=eager,
        compile=compile_backend,
        generate=generate,
        profile=profile,
    )
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = run_options(model, options, say)
    finally:
        torch.set_num_threads(previous_threads)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        say(f"wrote {json_path}")
    return result

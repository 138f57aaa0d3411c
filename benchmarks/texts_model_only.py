"""The model alone, bt against OpenVINO, on the batches ``bt bench --texts`` makes: no tokenizer, no pooling.

What BENCHMARKS.md's model-only figures in "Your model on your texts" come from: the texts are tokenized once,
then each round runs every batch of one order through bt's converted model and through OpenVINO's compiled
model (the same ONNX export ``bt bench`` makes), alternating whole passes as ``bt bench`` alternates rows. It
prints each side's median pass, the paired ratio (the median over rounds of OpenVINO's seconds over bt's),
the minor page faults per pass, and the process's peak memory. Without OpenVINO installed, or with
``--bt-only``, it times bt alone.

Run from the repository root::

    python benchmarks/texts_model_only.py --model DIR --texts FILE [--order sorted] [--autocast] [--bt-only]
        [--onnx model.onnx] [--counters] [--profile] [--short-rows N] [--against-short-rows N]

``BT_MALLOC=system`` in the environment leaves glibc's malloc as it is (``bt_core/_allocator.py``).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bt_core import BetterTransformer, _packing
from bt_core._bench_profile import format_profile, profile_call
from bt_core._runtimes import OnnxExport, RuntimeUnavailable, missing, openvino_compiled
from bt_core._workload_inputs import make_orders
from bt_core._workload_model import load_workload


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def openvino_pass(graph: Path, batches: list[dict[str, Any]], args: argparse.Namespace) -> Callable[[], None]:
    import numpy as np

    compiled = openvino_compiled(graph, args.threads, "bf16" if args.autocast else "f32", perf_count=args.counters)
    request = compiled.create_infer_request()
    names = [port.any_name for port in compiled.inputs]  # the graph's inputs, by the tokenizer's names
    feeds = [{name: batch[name].numpy().astype(np.int64) for name in names} for batch in batches]

    def run() -> None:
        for feed in feeds:
            request.infer(feed)

    if args.counters:
        run()
        totals: dict[str, float] = {}
        for feed in feeds:
            request.infer(feed)
            for node in request.get_profiling_info():
                totals[node.node_type] = totals.get(node.node_type, 0.0) + node.real_time.total_seconds()
        top = sorted(totals.items(), key=lambda item: -item[1])[:6]
        print("OpenVINO's counters, one pass: " + ", ".join(f"{kind} {sec * 1e3:.0f} ms" for kind, sec in top))
    return run


def _with_short_rows(tokens: int, run: Callable[[], None]) -> Callable[[], None]:
    """``run`` with rows of up to ``tokens`` tokens attended together (``SHORT_ROW_TOKENS``), bt's own after it."""

    def run_with() -> None:
        own, _packing.SHORT_ROW_TOKENS = _packing.SHORT_ROW_TOKENS, tokens
        try:
            run()
        finally:
            _packing.SHORT_ROW_TOKENS = own

    return run_with


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a sentence-transformers or transformers folder")
    parser.add_argument("--texts", type=Path, required=True, help="one text per line")
    parser.add_argument("--order", choices=["sorted", "arrival"], default="sorted")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--autocast", action="store_true", help="bt under bf16 autocast, OpenVINO in bf16")
    parser.add_argument(
        "--onnx",
        type=Path,
        help="OpenVINO reads this exported graph, exporting it first if it is missing; a later run that finds it "
        "exports nothing, so malloc stays as a process that only runs models leaves it",
    )
    parser.add_argument("--counters", action="store_true", help="print OpenVINO's time per node type for one pass")
    parser.add_argument(
        "--profile", action="store_true", help="print where one untimed bt pass spends its time (bt bench --profile)"
    )
    parser.add_argument(
        "--short-rows",
        type=int,
        default=None,
        help=f"attend rows of up to this many tokens together (default: bt's own, {_packing.SHORT_ROW_TOKENS})",
    )
    parser.add_argument(
        "--against-short-rows",
        type=int,
        default=None,
        metavar="N",
        help="also time the same converted model attending rows of up to N tokens together, alternating with bt's "
        "passes, and print bt's paired speed against it",
    )
    parser.add_argument(
        "--bt-only",
        action="store_true",
        help="no ONNX export or OpenVINO: malloc as a process that only runs bt leaves it (exporting frees large "
        "blocks, which raises glibc's own mmap and trim thresholds)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.short_rows is not None:
        _packing.SHORT_ROW_TOKENS = args.short_rows
    texts = [line.rstrip("\n") for line in args.texts.read_text().splitlines() if line.strip()]
    workload = load_workload(args.model, quiet=True)
    order = next(o for o in make_orders(texts, args.batch_size) if o.name == args.order)
    batches = [workload.tokenize(list(batch), "pt") for batch in order.batches]
    converted = BetterTransformer.transform(workload.model, keep_original_model=True)

    def bt_pass() -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.autocast):
            for batch in batches:
                converted(**batch)

    passes: dict[str, Callable[[], None]] = {"bt": bt_pass}
    if args.against_short_rows is not None:
        passes[f"bt, short rows {args.against_short_rows}"] = _with_short_rows(args.against_short_rows, bt_pass)
    if args.profile:
        bt_pass()
        print(format_profile("one bt pass", profile_call(bt_pass, "cpu")))
    with tempfile.TemporaryDirectory() as directory:
        reason = "--bt-only" if args.bt_only else missing("openvino", "onnx")
        if reason is None:
            try:
                graph = args.onnx
                if graph is None or not graph.is_file():
                    export = OnnxExport(workload, list(order.batches[0]), Path(directory))
                    graph = export.plain() if graph is None else shutil.copyfile(export.plain(), graph)
                passes["OpenVINO"] = openvino_pass(Path(graph), batches, args)
            except RuntimeUnavailable as exc:
                reason = str(exc)
        if reason is not None:
            print(f"OpenVINO: {reason}; timing bt alone")
        seconds: dict[str, list[float]] = {name: [] for name in passes}
        page_faults: dict[str, list[int]] = {name: [] for name in passes}
        for run in passes.values():
            run()  # warm-up
        for _ in range(args.rounds):
            for name, run in passes.items():
                before, start = faults(), time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
                page_faults[name].append(faults() - before)
    precision = "bf16 autocast" if args.autocast else "fp32"
    print(f"{len(batches)} {args.order} batches of {args.batch_size}, {precision}, {args.threads} threads, ", end="")
    print(f"{args.rounds} rounds")
    width = max(9, *map(len, passes))
    for name in passes:
        median_ms, median_faults = statistics.median(seconds[name]) * 1e3, statistics.median(page_faults[name])
        print(f"{name:<{width}} {median_ms:8.0f} ms a pass, {median_faults:8.0f} minor page faults a pass")
    for name in passes:
        if name != "bt":
            paired = statistics.median(o / b for b, o in zip(seconds["bt"], seconds[name], strict=True))
            print(f"bt speed against {name}, paired: {paired:.3f}x")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

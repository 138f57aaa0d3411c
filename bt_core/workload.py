"""``bt bench --model DIR --texts FILE``: the user's model on the user's texts, against what they would
run instead.

Rows: the model as loaded (sentence-transformers' ``encode``, or transformers with its default
attention), bt, and, when installed, ONNX Runtime and OpenVINO on the same model exported to ONNX.
``--dtype bfloat16`` (or float16) adds reduced-precision rows: autocast, bt under autocast, bt on the
cast model, OpenVINO with that inference precision and ONNX Runtime with dynamic int8. Each runs the
texts in arrival order and sorted by length, at ``--batch-size``; a round runs every row once per
order (the first row rotating), so slow drifts of a shared machine spread over all rows. Accuracy is
against the first row, in fp32, on the same batches.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._workload_inputs import InputError, Order, check_inputs, machine_info, make_orders, padding_fraction
from ._workload_report import Row, against_runtimes, format_table, row_result, score

__all__ = ["main", "run_workload"]

_SHORT = {"bfloat16": "bf16", "float16": "fp16"}


def main(args: argparse.Namespace) -> int:
    """Entry point from ``bt bench`` when ``--texts`` is given. Exit 2 on bad input, 1 on a model that fails."""
    try:
        texts, folder = check_inputs(args.texts, args.model)
        orders = make_orders(texts, args.batch_size)
        device = getattr(args, "device", "cpu")
        if device != "cpu":
            raise InputError(f"--device {device}: --texts compares CPU runtimes; drop --device")
        if getattr(args, "compile", None):
            raise InputError("--compile does not combine with --texts; time compiled models without --texts")
        if args.runs < 1 or args.warmup < 0:
            raise InputError("--runs must be at least 1 and --warmup at least 0")
    except InputError as exc:
        print(f"bt bench: {exc}", file=sys.stderr)
        return 2
    from ._workload_model import LoadError
    from .errors import BetterTransformerError

    try:
        result = run_workload(
            texts, folder, orders, texts_file=args.texts, batch_size=args.batch_size, dtype=args.dtype,
            threads=args.threads, clock=args.clock, runs=args.runs, warmup=args.warmup, strategy=args.strategy,
            quiet=args.quiet, profile=getattr(args, "profile", False),
        )  # fmt: skip
    except (LoadError, BetterTransformerError, OSError) as exc:
        print(f"bt bench: {exc}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_workload(
    texts: list[str],
    folder: Path,
    orders: list[Order],
    *,
    texts_file: str,
    batch_size: int = 32,
    dtype: str = "float32",
    threads: int | None = None,
    clock: str = "wall",
    runs: int = 3,
    warmup: int = 1,
    strategy: str | None = None,
    quiet: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    """Load, build every row, time them and return the result (``machine``, ``settings``, ``model``,
    ``orders``, ``rows`` with raw samples and accuracy; with ``profile``, each torch row's ``profile``)."""
    import torch

    from ._workload_model import load_workload

    def say(message: str) -> None:
        if not quiet:
            print(f"[bt bench] {message}", file=sys.stderr, flush=True)

    previous = torch.get_num_threads()
    threads = threads or previous
    torch.set_num_threads(threads)
    try:
        say(f"loading {folder}")
        workload = load_workload(folder, quiet)
        with tempfile.TemporaryDirectory(prefix="bt-bench-") as scratch:
            rows = _build_rows(workload, texts, Path(scratch), dtype, threads, strategy, say)
            _time_rows(rows, orders, runs, warmup, clock, quiet)
            if profile:
                _profile_rows(rows, orders)
    finally:
        torch.set_num_threads(previous)
    reference = rows[0]
    if reference.status != "ok":
        raise OSError(f"the model as loaded failed on the texts: {reference.note}")
    for row in rows[1:]:
        if row.status == "ok":
            row.accuracy = {o: score(workload.kind, reference.outputs[o], row.outputs[o]) for o in row.outputs}
    metric = "max |logit diff|" if workload.kind == "logits" else "min cosine"
    command = f"bt bench --model {folder} --texts {texts_file} --batch-size {batch_size}"
    command += f" --dtype {dtype} --threads {threads} --runs {runs} --warmup {warmup}"
    command += (f" --clock {clock}" if clock != "wall" else "") + (f" --strategy {strategy}" if strategy else "")
    command += " --profile" if profile else ""
    order_info = {}
    for order in orders:
        fraction, real = padding_fraction(order, workload.attention_mask)
        order_info[order.name] = {
            "description": order.description, "batches": len(order.batches), "padding_fraction": fraction,
            "real_tokens": real,
        }  # fmt: skip
    return {
        "machine": machine_info(threads),
        "settings": {
            "texts_file": texts_file, "texts": len(texts), "batch_size": batch_size, "dtype": dtype,
            "clock": clock, "runs": runs, "warmup": warmup, "strategy": strategy or "auto", "command": command,
        },
        "model": {
            "folder": str(folder), "source": workload.source, "kind": workload.kind, "metric": metric,
            "notes": workload.notes,
        },
        "orders": order_info,
        "rows": [row_result(row, len(texts), reference) for row in rows],
        "against_runtimes": against_runtimes(rows),
    }  # fmt: skip


def _build_rows(
    workload: Any, texts: list[str], scratch: Path, dtype: str, threads: int, strategy: str | None,
    say: Callable[[str], None],
) -> list[Row]:  # fmt: skip
    """Every row, in table order; one that cannot be set up carries its one-line reason instead of a call."""
    import torch

    from . import _runtimes as rt
    from ._strategy import force_strategy, record_strategies
    from ._workload_model import run_torch
    from .convert import BetterTransformer
    from .errors import BetterTransformerError

    original = workload.encoder if workload.encoder is not None else workload.model
    attention = getattr(workload.model.config, "_attn_implementation", None) or "default"
    front = "sentence-transformers" if workload.encoder is not None else "transformers"
    rows = [Row(f"{front} as loaded ({attention} attention)", "fp32", run_torch(workload, original), torch=True)]
    low = getattr(torch, dtype) if dtype != "float32" else None
    short = _SHORT.get(dtype, dtype)

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=low)

    converted_fp32: list[Any] = []  # the fp32 conversion, shared by the bt rows with and without autocast

    def bt_row(name: str, precision: str, cast: bool = False, under_autocast: bool = False, bare: bool = False) -> Row:
        row = Row(name, precision, None, torch=True, bt=True)
        try:
            if cast:
                converted = BetterTransformer.transform(copy.deepcopy(original).to(low))
            else:
                if not converted_fp32:
                    converted_fp32.append(BetterTransformer.transform(original, keep_original_model=True))
                converted = converted_fp32[0]
        except BetterTransformerError as exc:
            row.status, row.note = "skipped", str(exc).splitlines()[0]
            return row

        def context() -> contextlib.ExitStack:
            stack = contextlib.ExitStack()
            stack.enter_context(force_strategy(strategy))
            stack.enter_context(record_strategies(row.strategies))
            if under_autocast:
                stack.enter_context(autocast())
            return stack

        row.run = run_torch(workload, converted, context, bare=bare)
        return row

    # The runtime rows are a bare tokenize-infer-pool loop; where the torch rows go through encode, bt also runs
    # that loop, so the runtimes are compared with bt on equal terms as well as with what the user runs.
    bare = workload.encoder is not None and workload.pooling is not None
    bare_name = "bt, bare loop like the runtime rows (tokenize, model, pool)"
    say("converting with bt")
    rows.append(bt_row("bt", "fp32"))
    if bare:
        rows.append(bt_row(bare_name, "fp32", bare=True))
    export = rt.OnnxExport(workload, texts[:2], scratch)

    def runtime_row(name: str, precision: str, modules: tuple[str, ...], build: Callable[[], Any]) -> Row:
        reason = rt.missing(*modules) or (
            f"cannot reproduce the pipeline: {workload.not_replicable}" if workload.not_replicable else None
        )
        if reason:
            return Row(name, precision, None, reason, status="skipped")
        say(f"preparing {name}")
        try:
            run, note = build()
        except rt.RuntimeUnavailable as exc:
            return Row(name, precision, None, str(exc), status="skipped")
        return Row(name, precision, run, note)

    ort, ov = ("onnx", "onnxruntime"), ("openvino",)
    rows.append(runtime_row("ONNX Runtime", "fp32", ort, lambda: rt.onnxruntime_row(export, threads)))
    rows.append(runtime_row("OpenVINO", "fp32", ov, lambda: rt.openvino_row(export, threads, "f32")))
    if low is None:
        return rows
    rows.append(
        Row(f"{front} under autocast", f"{short} autocast", run_torch(workload, original, autocast), torch=True)
    )
    rows.append(bt_row("bt under autocast", f"{short} autocast", under_autocast=True))
    if bare:
        rows.append(bt_row(bare_name, f"{short} autocast", under_autocast=True, bare=True))
    rows.append(bt_row(f"bt on the model .to({dtype})", short, cast=True))
    rows.append(runtime_row("OpenVINO", f"{short} hint", ov, lambda: rt.openvino_row(export, threads, short)))
    rows.append(runtime_row("ONNX Runtime", "int8 dynamic", ort, lambda: rt.onnxruntime_row(export, threads, True)))
    return rows


def _time_rows(rows: list[Row], orders: list[Order], runs: int, warmup: int, clock: str, quiet: bool) -> None:
    """Run every live row over every order, ``warmup`` untimed rounds then ``runs`` timed ones."""
    from tqdm import tqdm

    now = time.process_time if clock == "cpu" else time.perf_counter
    live = [row for row in rows if row.run is not None]
    bar = tqdm(total=(warmup + runs) * len(orders) * len(live), desc="bt bench", unit="pass", file=sys.stderr,
               disable=quiet, dynamic_ncols=True)  # fmt: skip
    with bar:
        for round_index in range(warmup + runs):
            timed = round_index >= warmup
            shift = round_index % max(1, len(live))
            for order in orders:
                for row in live[shift:] + live[:shift]:
                    bar.set_postfix_str(f"{'run' if timed else 'warm-up'} {order.name}: {row.name} {row.precision}")
                    if row.run is not None:
                        _pass(row, order, timed, now)
                    bar.update(1)


def _profile_rows(rows: list[Row], orders: list[Order]) -> None:
    """``--profile``: one untimed pass of each torch row over each order under ``torch.profiler`` (the runtime
    rows' work happens outside torch, where it cannot see)."""
    from ._bench_profile import profile_call

    for row in rows:
        run = row.run
        if run is None or not row.torch:
            continue
        for order in orders:
            call = lambda run=run, batches=order.batches: [run(list(batch)) for batch in batches]  # noqa: E731
            row.profile[order.name] = profile_call(call, "cpu")


def _pass(row: Row, order: Order, timed: bool, now: Callable[[], float]) -> None:
    """One timed pass of ``row`` over ``order``'s batches; a row that raises is marked failed, not fatal."""
    assert row.run is not None
    try:
        start = now()
        outputs = [row.run(list(batch)) for batch in order.batches]
        elapsed = now() - start
    except Exception as exc:  # a runtime failing on some batch shape: the row says why, the others go on
        lines = str(exc).strip().splitlines()
        row.run, row.status = None, "failed"
        row.note = f"failed on {order.name} batches: {type(exc).__name__}: {lines[0][:160] if lines else ''}"
        row.samples.clear()
        row.outputs.clear()
        return
    row.outputs[order.name] = outputs
    if timed:
        row.samples.setdefault(order.name, []).append(elapsed)

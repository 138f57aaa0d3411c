"""Rows of ``bt bench --texts`` and what is made of them: accuracy, medians, the table and the JSON."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._bench_profile import format_profile

__all__ = ["Row", "against_runtimes", "format_table", "row_result", "score"]

Run = Callable[[list[str]], Any]


@dataclass
class Row:
    """One way of running the texts: its call on a batch (None when it cannot run), and what it measured."""

    name: str
    precision: str
    run: Run | None
    note: str = ""
    status: str = "ok"  # ok, skipped (could not be set up), failed (raised while timed)
    strategies: set[str] = field(default_factory=set)  # bt's execution strategies, for bt rows
    samples: dict[str, list[float]] = field(default_factory=dict)  # order -> seconds per timed round
    outputs: dict[str, list[Any]] = field(default_factory=dict)  # order -> per-batch outputs of the last pass
    accuracy: dict[str, float] = field(default_factory=dict)  # order -> min cosine or max |difference|
    torch: bool = False  # runs in torch, where ``--profile`` can see its operators
    bt: bool = False  # a converted model's row, which ``against_runtimes`` pairs with the runtime rows
    profile: dict[str, Any] = field(default_factory=dict)  # order -> bt_core._bench_profile.profile_call's result

    def median(self, order: str) -> float | None:
        values = self.samples.get(order)
        return statistics.median(values) if values else None


def score(kind: str, reference: list[Any], outputs: list[Any]) -> float:
    """Min cosine over texts (embeddings) or max |difference| (logits) of ``outputs`` against ``reference``."""
    import numpy as np

    a = np.concatenate(reference).astype(np.float64)
    b = np.concatenate(outputs).astype(np.float64)
    if kind == "logits":
        return float(np.abs(a - b).max())
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(((a * b).sum(axis=1) / norms).min())


def row_result(row: Row, texts: int, reference: Row) -> dict[str, Any]:
    """A row as it goes into the JSON: every timed round's seconds per order, medians, texts/s, accuracy,
    and ``speedup``: per order, the median over rounds of the ``reference`` row's seconds over this row's in
    the same round. Rows alternate within a round, so the pairs share the machine's state of the moment; on
    a noisy machine that ratio is steadier than the ratio of the two medians."""
    medians = {order: row.median(order) for order in row.samples}
    speedup = _paired(reference, row)
    return {
        "name": row.name,
        "precision": row.precision,
        "status": row.status,
        "note": row.note,
        "strategies": sorted(row.strategies),
        "samples_s": row.samples,
        "median_s": medians,
        "texts_per_s": {order: texts / s for order, s in medians.items() if s},
        "speedup": speedup,
        "accuracy": row.accuracy,
        **({"profile": row.profile} if row.profile else {}),
    }


def _paired(numerator: Row, denominator: Row) -> dict[str, float]:
    """Per order both rows timed in every round: the median over rounds of ``numerator``'s seconds over
    ``denominator``'s in the same round."""
    ratios = {}
    for order, seconds in denominator.samples.items():
        base = numerator.samples.get(order, [])
        if len(base) == len(seconds) and seconds:
            ratios[order] = statistics.median(b / s for b, s in zip(base, seconds, strict=True))
    return ratios


def _precision_class(precision: str) -> str:
    """What a row's precision is compared within: "fp32", "bf16"/"fp16" (autocast, a cast model or a
    runtime's hint alike), or the precision itself (int8, whose accuracy no bt row shares)."""
    return next((name for name in ("fp32", "bf16", "fp16") if precision.startswith(name)), precision)


def against_runtimes(rows: list[Row]) -> list[dict[str, Any]]:
    """Each timed bt row against each timed runtime row of its class of precision (fp32 with fp32, bf16
    with bf16): ``ratio`` per order is the runtime's seconds over bt's in the same round, median over
    rounds, so above 1 bt is ahead."""
    timed = [row for row in rows if row.status == "ok" and row.samples]
    pairs = []
    for bt in (row for row in timed if row.bt):
        for runtime in (row for row in timed if not row.torch):
            if _precision_class(bt.precision) == _precision_class(runtime.precision):
                pairs.append({
                    "row": bt.name, "precision": bt.precision, "against": runtime.name,
                    "against_precision": runtime.precision, "ratio": _paired(runtime, bt),
                })  # fmt: skip
    return pairs


def format_table(result: dict[str, Any]) -> str:
    """The report printed at the end: settings, machine, padding per order, then one line per row."""
    settings, machine, model = result["settings"], result["machine"], result["model"]
    orders = result["orders"]
    versions = ", ".join(
        f"{name} {machine[name]}"
        for name in ("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino")
        if machine.get(name)
    )
    threads = f"{machine['threads']} thread" + ("s" if machine["threads"] != 1 else "")
    lines = [
        f"{settings['texts']} texts from {settings['texts_file']}, batch {settings['batch_size']}, {threads}, "
        f"{settings['clock']}-clock medians of {settings['runs']} rounds after {settings['warmup']} warm-up "
        "(rows alternate within a round)",
        f"model {model['folder']}: {model['source']}",
        f"machine: {machine['cpu']}, {machine['cpu_count']} cores; {versions}",
        *([f"malloc: {machine['malloc']}"] if machine.get("malloc") else []),
        "orders: " + "; ".join(f"{o['description']}, {o['padding_fraction']:.1%} padding" for o in orders.values()),
        *[f"note: {note}" for note in model["notes"]],
        "",
    ]
    metric = model["metric"]
    header = ["row", "precision", *[f"{name} texts/s" for name in orders], metric, "note"]
    table = [header]
    for index, row in enumerate(result["rows"]):
        cells = [row["name"], row["precision"]]
        for order in orders:
            rate, speedup = row["texts_per_s"].get(order), row.get("speedup", {}).get(order)
            cells.append(f"{rate:.1f} ({speedup:.2f}x)" if rate and speedup else f"{rate:.1f}" if rate else "-")
        if index == 0:
            cells.append("reference")
        elif row["accuracy"]:
            values = row["accuracy"].values()
            worst = max(values) if model["kind"] == "logits" else min(values)
            cells.append(f"{worst:.2e}" if model["kind"] == "logits" else f"{worst:.6f}")
        else:
            cells.append("-")
        note = row["note"]
        if row["strategies"]:
            note = ("strategy " + "+".join(row["strategies"]) + ("; " + note if note else "")).strip()
        cells.append(note)
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        numeric = [cell.rjust(width) for cell, width in zip(r[2:-1], widths[2:], strict=True)]
        left = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        lines.append("  ".join([*left, *numeric, r[-1]]).rstrip())
    pairs = result.get("against_runtimes", [])
    if pairs:
        lines += ["", "bt against the runtimes, paired within rounds (" + " / ".join(orders) + "):"]
        for pair in pairs:
            ratios = " / ".join(f"{pair['ratio'][o]:.2f}x" if o in pair["ratio"] else "-" for o in orders)
            against = f"{pair['against']} ({pair['against_precision']})"
            lines.append(f"  {pair['row']} ({pair['precision']}) against {against}: {ratios}")
    for row in result["rows"]:
        for order, profiled in row.get("profile", {}).items():
            lines.append(format_profile(f"{row['name']} ({row['precision']}), {order} order", profiled))
    lines.append("")
    lines.append(
        "texts/s: texts over the median seconds for all batches of an order, tokenization included; (x): the first "
        "row's seconds over this row's in the same round, median over rounds (bt against the runtimes: the "
        "runtime's seconds over bt's); "
        f"{metric}: worst over both orders against the first row, fp32, same order"
    )
    return "\n".join(lines)

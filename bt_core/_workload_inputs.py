"""Inputs of ``bt bench --texts``: checking the user's arguments, reading the texts, the two batch orders.

Everything here runs before torch or transformers are imported, so a wrong path is reported at once.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["InputError", "Order", "check_inputs", "machine_info", "make_orders", "padding_fraction"]


class InputError(ValueError):
    """A ``--texts`` or ``--model`` argument that cannot work, found before any model is loaded."""


def check_inputs(texts: str, model: str) -> tuple[list[str], Path]:
    """The non-blank lines of ``texts`` and the model folder, or an :class:`InputError` naming the fix."""
    path = Path(texts)
    if not path.exists():
        raise InputError(f"--texts {texts}: no such file; give a text file with one text per line")
    if not path.is_file():
        raise InputError(f"--texts {texts} is not a file; give a text file with one text per line")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--texts {texts} is not UTF-8 text; save it as UTF-8, one text per line") from None
    lines = [line.strip() for line in raw.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise InputError(f"--texts {texts} has no text (every line is blank); write one text per line")
    folder = Path(model)
    if not folder.is_dir():
        raise InputError(
            f"--model {model} is not a folder; with --texts, --model is a local sentence-transformers or "
            "transformers model folder (what SentenceTransformer.save or save_pretrained writes)"
        )
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise InputError(
            f"--model {model} is not a model folder: it has neither modules.json (sentence-transformers) nor "
            "config.json (transformers); point --model at the folder save_pretrained or SentenceTransformer.save wrote"
        )
    return lines, folder


@dataclass(frozen=True)
class Order:
    """One way of cutting the texts into batches."""

    name: str
    description: str
    batches: tuple[tuple[str, ...], ...]


def make_orders(texts: Sequence[str], batch_size: int) -> list[Order]:
    """Arrival order (the file's, as a server batches requests) and sorted by length.

    Sorted is what ``SentenceTransformer.encode`` does with a list: longest first by characters (the
    sort here is stable, so equal lengths keep the file's order).
    """
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: give a positive number of texts per batch")

    def cut(ordered: Sequence[str]) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(ordered[i : i + batch_size]) for i in range(0, len(ordered), batch_size))

    by_length = sorted(texts, key=len, reverse=True)
    return [
        Order("arrival", "arrival order (the file's)", cut(list(texts))),
        Order("sorted", "sorted by length (what encode does)", cut(by_length)),
    ]


def padding_fraction(order: Order, attention_mask: Callable[[list[str]], Any]) -> tuple[float, int]:
    """Share of the padded token slots of ``order``'s batches that are padding, and the real tokens.

    ``attention_mask`` tokenizes a batch as every row does and returns its (batch, length) mask.
    """
    slots = real = 0
    for batch in order.batches:
        mask = attention_mask(list(batch))
        slots += int(mask.shape[0] * mask.shape[1])
        real += int(mask.sum())
    return (1.0 - real / slots if slots else 0.0), real


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on: CPU, core count, threads and the versions of every runtime."""
    from ._allocator import allocator_state
    from ._bench_measure import cpu_name

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "malloc": allocator_state(),
    }
    for distribution in ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "openvino"):
        try:
            info[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            info[distribution] = None
    return info

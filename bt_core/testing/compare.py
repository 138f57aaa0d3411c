"""Comparing a converted model's outputs with the original's: per output, on the positions that count.

Used by :class:`bt_core.testing.AdapterConformance` and by ``bt check``; needs no pytest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "OutputDiff",
    "compare_outputs",
    "compare_with_position_zero",
    "flatten_outputs",
    "format_diffs",
    "token_keep",
]


def flatten_outputs(output: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(name, leaf)]`` for a model output: ModelOutput/dict fields, tuple items, tensors."""
    if isinstance(output, Tensor):
        return [(prefix or "output", output)]
    if isinstance(output, dict):  # ModelOutput is an OrderedDict of its non-None fields
        items: list[tuple[str, Any]] = []
        for key, value in output.items():
            items.extend(flatten_outputs(value, f"{prefix}.{key}" if prefix else str(key)))
        return items
    if isinstance(output, (tuple, list)):
        items = []
        for index, value in enumerate(output):
            items.extend(flatten_outputs(value, f"{prefix}[{index}]" if prefix else f"output[{index}]"))
        return items
    return []


@dataclass(frozen=True)
class OutputDiff:
    """How one output of the converted model compares with the original's."""

    name: str
    max_abs_diff: float
    compared: str  # "valid tokens", "all", or why nothing could be compared
    index: tuple[int, ...] | None = None
    problem: str | None = None  # shape/dtype/missing mismatch: never within tolerance

    def within(self, atol: float) -> bool:
        return self.problem is None and self.max_abs_diff <= atol

    def describe(self) -> str:
        if self.problem is not None:
            return f"{self.name}: {self.problem}"
        where = f" at index {self.index}" if self.index is not None and self.max_abs_diff > 0 else ""
        return f"{self.name}: max abs diff {self.max_abs_diff:.3g} ({self.compared}){where}"


def compare_outputs(expected: Any, actual: Any, attention_mask: Tensor | None = None) -> list[OutputDiff]:
    """Compare every tensor output; ``(batch, seq_len, ...)`` outputs only on the positions the mask keeps."""
    expected_items = dict(flatten_outputs(expected))
    actual_items = dict(flatten_outputs(actual))
    keep = attention_mask.bool() if isinstance(attention_mask, Tensor) and attention_mask.dim() == 2 else None
    diffs = []
    for name, want in expected_items.items():
        if not isinstance(want, Tensor):
            continue
        got = actual_items.get(name)
        if not isinstance(got, Tensor):
            diffs.append(OutputDiff(name, math.inf, "missing", problem="missing from the converted model's output"))
            continue
        if got.is_nested:
            diffs.append(
                OutputDiff(name, math.inf, "nested", problem="is a nested tensor (the last layer did not un-nest it)")
            )
            continue
        if tuple(got.shape) != tuple(want.shape):
            diffs.append(
                OutputDiff(
                    name, math.inf, "shape", problem=f"has shape {tuple(got.shape)}, the original {tuple(want.shape)}"
                )
            )
            continue
        if not want.is_floating_point():
            same = torch.equal(got, want)
            diffs.append(OutputDiff(name, 0.0 if same else math.inf, "all", problem=None if same else "differs"))
            continue
        diff = (got.detach().double() - want.detach().double()).abs()
        compared = "all"
        positions = token_keep(keep, want)
        if positions is not None:
            mask = positions.to(diff.device).reshape(*positions.shape, *([1] * (want.dim() - 2)))
            diff = torch.where(mask, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
            compared = "valid tokens"
        if diff.numel() == 0:
            diffs.append(OutputDiff(name, 0.0, compared))
            continue
        nan_mismatch = torch.isnan(diff)
        if bool(nan_mismatch.any()):
            flat = int(nan_mismatch.reshape(-1).nonzero()[0])
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
            diffs.append(OutputDiff(name, math.nan, compared, index, problem=f"has NaN at index {index}"))
            continue
        flat = int(diff.reshape(-1).argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        diffs.append(OutputDiff(name, float(diff.reshape(-1)[flat]), compared, index))
    return diffs


def compare_with_position_zero(expected: Any, actual: Any, attention_mask: Tensor | None) -> list[OutputDiff]:
    """:func:`compare_outputs`, plus every per-token output compared at position 0 of every row.

    Heads read position 0 (BERT's pooler, a CLS classifier). In a left-padded batch it is a pad token
    whose hidden state the original computes, so the converted model must compute it too, although
    :func:`compare_outputs` skips it as padding.
    """
    diffs = compare_outputs(expected, actual, attention_mask)
    if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 2:
        return diffs
    first = torch.zeros_like(attention_mask, dtype=torch.bool)
    first[:, 0] = True
    at_zero = [d for d in compare_outputs(expected, actual, first) if d.compared == "valid tokens"]
    label = "position 0: padding here, which the original computes and heads read"
    return diffs + [dataclasses.replace(d, name=f"{d.name} at position 0", compared=label) for d in at_zero]


def token_keep(keep: Tensor | None, output: Tensor) -> Tensor | None:
    """The positions of ``output`` to compare: the mask's valid tokens for a ``(batch, seq_len, ...)`` output;
    for an output longer than the mask (text tokens followed by image patches, as in ViLT) also every
    position past the mask (3-D and larger outputs only). None when the output is not per token."""
    if keep is None or output.dim() < 2 or output.shape[0] != keep.shape[0] or output.shape[1] < keep.shape[1]:
        return None
    extra = output.shape[1] - keep.shape[1]
    if extra == 0:
        return keep
    if output.dim() == 2:  # (batch, features), e.g. a pooled output: not per token
        return None
    return torch.cat([keep, keep.new_ones(keep.shape[0], extra)], dim=1)


def format_diffs(diffs: list[OutputDiff], atol: float) -> str:
    """One ``ok``/``FAIL`` line per output, for a report."""
    lines = []
    for diff in diffs:
        mark = "ok  " if diff.within(atol) else "FAIL"
        lines.append(f"  {mark} {diff.describe()}")
    return "\n".join(lines)

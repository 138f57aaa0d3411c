"""``bt bench --profile``: where the converted model's time goes, by kind of work.

One extra, untimed call of the converted model per table row runs under ``torch.profiler``; each
operator's own time (not counting the operators it calls) goes to the first kind whose name pattern it
matches. This is what the roofline ratio leaves open: how much of the gap to the GEMM-only time is
attention, norms, activations or moving tokens.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["KINDS", "format_profile", "profile_call"]

#: (kind, substrings of the operator name), tried in order: SDPA's kernels before the GEMMs' names. Batched
#: matrix products are attention's (scores and values: eager attention, bt's short rows); projections are
#: ``linear``/``addmm``/``mm``.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # bmm covers baddbmm; exp_, not "exp", which expand contains.
    (
        "attention",
        ("scaled_dot_product", "flash_attention", "softmax", "_transformer_encoder_layer", "bmm", "amax", "exp_"),
    ),
    ("norms", ("layer_norm", "rms_norm", "rsqrt")),
    ("activation", ("gelu", "relu", "silu", "tanh", "sigmoid")),
    ("gather/scatter/copies", ("index", "copy", "cat", "nonzero", "nested", "contiguous", "clone")),
    ("projections (GEMM)", ("linear", "addmm", "aten::mm", "matmul")),
    ("residual adds, scaling", ("add", "mul", "div")),
)
OTHER = "other"

#: The line starts of what torch's profiler back end (kineto) writes to the process's stderr, from C++, each
#: time a profile starts and stops: markers for tracing tools, not messages for the user.
_PROFILER_MARKERS = (b"STAGE:", b"USDT:")


def _kind(name: str) -> str:
    for kind, patterns in KINDS:
        if any(pattern in name for pattern in patterns):
            return kind
    return OTHER


def profile_call(call: Callable[[], Any], device: Any) -> dict[str, Any]:
    """Run ``call`` once under the profiler: ``{"total_ms": ..., "shares": {kind: fraction}}``, each
    kind's share of the operators' own time (CPU time; on CUDA, device time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _without_profiler_markers(), profile(activities=activities) as prof:
        call()
        if cuda:
            torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        own_us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if own_us > 0:
            kind = _kind(event.key)
            totals[kind] = totals.get(kind, 0.0) + own_us
    total = sum(totals.values()) or 1.0
    shares = {kind: totals[kind] / total for kind in sorted(totals, key=totals.__getitem__, reverse=True)}
    return {"total_ms": total / 1e3, "shares": shares}


@contextlib.contextmanager
def _without_profiler_markers() -> Iterator[None]:
    """The process's stderr (file descriptor 2, where C++ writes) held in a temporary file meanwhile, then
    passed on without the profiler's start/stop markers: a warning or error written meanwhile still shows."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True) if not line.startswith(_PROFILER_MARKERS)]
            if kept:
                os.write(2, b"".join(kept))


def format_profile(label: str, result: dict[str, Any]) -> str:
    """One line: ``label``'s kinds of work, largest first, as percentages of the profiled call."""
    parts = ", ".join(f"{kind} {share:.0%}" for kind, share in result["shares"].items() if share >= 0.005)
    return f"profile of {label} (torch operators' own time, {result['total_ms']:.1f} ms profiled): {parts}"

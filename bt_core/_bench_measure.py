"""``bt bench``'s measuring: timers, alternating timed rounds, the GEMM roofline probe, model sizes and
the machine's description."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._allocator import allocator_state

__all__ = ["cpu_name", "gemm_probe", "machine", "param_bytes", "time_rounds", "timer"]


def param_bytes(model: Any) -> int:
    """Bytes of every distinct parameter and buffer storage the model keeps, converted layers' kept
    originals included (meta tensors, which hold no memory, excluded)."""
    from .layer import BetterTransformerBaseLayer

    seen: set[int] = set()
    total = 0

    def count(tensors: Any) -> None:
        nonlocal total
        for tensor in tensors:
            if tensor.device.type == "meta":
                continue
            key = tensor.untyped_storage().data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += tensor.untyped_storage().nbytes()

    count(model.parameters())
    count(model.buffers())
    for module in model.modules():
        if isinstance(module, BetterTransformerBaseLayer):
            count(module.original_layer.parameters())
            count(module.original_layer.buffers())
    return total


def timer(device: Any, clock: str = "wall") -> Callable[[Callable[[], Any]], float]:
    """A function timing one call on ``device`` (synchronised on CUDA) by wall or process CPU time."""
    import torch

    now = time.process_time if clock == "cpu" and device.type == "cpu" else time.perf_counter

    def measure(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = now()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return now() - start

    return measure


def time_rounds(
    calls: dict[str, Callable[[], Any]],
    measure: Callable[[Callable[[], Any]], float],
    runs: int,
    warmup: int,
    say: Callable[[str], None],
    label: str,
) -> dict[str, list[float]]:
    """Every call once per round, back to back in order, ``warmup`` untimed rounds then ``runs`` timed
    ones: alternating keeps a shared machine's slow drifts out of the ratios. Seconds per call name."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + runs):
        timed = round_index >= warmup
        step = f"run {round_index - warmup + 1}/{runs}" if timed else f"warm-up {round_index + 1}/{warmup}"
        say(f"{label}: {step}")
        for name, call in calls.items():
            elapsed = measure(call)
            if timed:
                times[name].append(elapsed)
    return times


def gemm_probe(hidden: int, ffn: int, tokens: int, device: Any, dtype: Any) -> tuple[Callable[[], None], float]:
    """The four projection GEMMs of one layer (q/k/v, output, feed-forward in and out) on ``tokens``
    rows, bias-free, in the model's dtype: the work an exact implementation cannot avoid, at the
    shapes it must run them, with the fastest GEMM kernel bt has for them (oneDNN's on CPU where it
    runs, else ``torch.mm``). Returns the function and its FLOPs."""
    import torch

    from ._math import matmul, onednn_allowed

    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    inner = torch.randn(tokens, ffn, device=device, dtype=dtype)
    weights = [
        torch.randn(rows, cols, device=device, dtype=dtype)
        for rows, cols in ((3 * hidden, hidden), (hidden, hidden), (ffn, hidden), (hidden, ffn))
    ]

    onednn = onednn_allowed(x)

    def run() -> None:
        with torch.inference_mode():
            matmul(x, weights[0], None, onednn)
            matmul(x, weights[1], None, onednn)
            matmul(x, weights[2], None, onednn)
            matmul(inner, weights[3], None, onednn)

    return run, 2.0 * tokens * (4 * hidden * hidden + 2 * hidden * ffn)


def machine(device: Any) -> dict[str, Any]:
    """Versions, threads and processor names, for the result's ``machine``."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "malloc": allocator_state(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

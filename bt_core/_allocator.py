"""Freed memory kept for the next batch on glibc, instead of being faulted back in page by page.

torch's CPU tensors come from the C library's ``malloc``. glibc serves large blocks with ``mmap`` and hands
a heap top above its trim threshold back to the OS, so a forward pass that makes and frees tens of MB of
temporaries faults every page back in on the next batch. Over MiniLM's 512 sorted texts (batches of 32)
bt took 9,000 minor page faults per pass in float32 and 32,000 under bf16 autocast; OpenVINO, which pools
its own memory, about 30. With the mmap threshold at glibc's own dynamic maximum (32 MiB) and the trim
threshold at 128 MiB, none, at the same peak memory (``benchmarks/texts_model_only.py``, BENCHMARKS.md).

``BetterTransformer.transform`` applies this once per process when it converts a model for the CPU, on
glibc only, and not where the user already chose: ``BT_MALLOC=system``, glibc's own ``MALLOC_*_`` or
``GLIBC_TUNABLES`` malloc settings, or another allocator in ``LD_PRELOAD`` (jemalloc, tcmalloc).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

__all__ = ["ENV", "allocator_plan", "allocator_state", "keep_freed_memory"]

ENV = "BT_MALLOC"
#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_lock = threading.Lock()
_applied: str | None = None


def allocator_plan() -> tuple[bool, str]:
    """Whether bt tunes malloc in this process, and why (``bt doctor`` prints it)."""
    libc, description = _plan()
    return libc is not None, description


def keep_freed_memory() -> str:
    """Apply :func:`allocator_plan` once per process; returns what was done."""
    global _applied
    with _lock:
        if _applied is None:
            libc, description = _plan()
            if libc is not None:
                done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                done = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
                description = description if done else "malloc left as is (glibc refused mallopt)"
            _applied = description
        return _applied


def allocator_state() -> str:
    """What :func:`keep_freed_memory` did in this process, for benchmark reports."""
    return _applied or "malloc as the process started (no model converted for the CPU yet)"


def _plan() -> tuple[ctypes.CDLL | None, str]:
    """glibc's library when bt should tune it (else None), and the one-line reason."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        return None, f"malloc left as is ({ENV}=system)"
    chosen = [name for name in _USER_SETTINGS if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        return None, f"malloc left as is (set by {', '.join(chosen)})"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc
        return None, "malloc left as is (an allocator in LD_PRELOAD)"
    libc = _glibc()
    if libc is None:
        return None, "malloc left as is (not glibc)"
    return libc, (
        f"glibc malloc keeps freed memory for reuse (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
        f"{TRIM_THRESHOLD >> 20} MiB) once a model is converted for the CPU; {ENV}=system leaves it as is"
    )


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (``gnu_get_libc_version`` is glibc's alone), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc

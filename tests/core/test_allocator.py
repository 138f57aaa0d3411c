"""Converting a model for the CPU keeps glibc's freed memory for reuse, once per process, unless the user
chose otherwise: ``BT_MALLOC=system``, their own glibc malloc settings, or another allocator preloaded.

The C library is a stand-in here: the tests check which ``mallopt`` calls bt makes, not glibc itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import bt_core._allocator as allocator
from bt_core import BetterTransformer
from bt_core.registry import PluginRegistry

from .conftest import make_toy


class FakeGlibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.gnu_get_libc_version = lambda: b"2.36"

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGlibc]:
    fake = FakeGlibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    monkeypatch.setattr(allocator, "_applied", None)
    for name in (allocator.ENV, "GLIBC_TUNABLES", "LD_PRELOAD", *allocator._USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    yield fake


TUNED = [(allocator.M_MMAP_THRESHOLD, 32 << 20), (allocator.M_TRIM_THRESHOLD, 128 << 20)]


def test_converting_for_the_cpu_keeps_freed_memory_once_per_process(libc: FakeGlibc, registry: PluginRegistry) -> None:
    BetterTransformer.transform(make_toy())
    BetterTransformer.transform(make_toy())
    assert libc.calls == TUNED


def test_a_model_on_another_device_leaves_malloc_alone(
    libc: FakeGlibc, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_toy()
    meta = torch.nn.Parameter(torch.empty(1, device="meta"))
    monkeypatch.setattr(type(model), "parameters", lambda self, recurse=True: iter([meta]))
    BetterTransformer.transform(model)
    assert libc.calls == []


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("BT_MALLOC", "system", "BT_MALLOC=system"),
        ("MALLOC_TRIM_THRESHOLD_", "1000000", "set by MALLOC_TRIM_THRESHOLD_"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1000000", "set by GLIBC_TUNABLES"),
        ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2", "an allocator in LD_PRELOAD"),
        ("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4", "an allocator in LD_PRELOAD"),
    ],
)
def test_what_the_user_chose_is_left_as_is(
    libc: FakeGlibc, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert allocator.keep_freed_memory() == f"malloc left as is ({reason})"
    assert libc.calls == []


def test_another_c_library_is_left_as_is(monkeypatch: pytest.MonkeyPatch, libc: FakeGlibc) -> None:
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() == "malloc left as is (not glibc)"


def test_a_refused_mallopt_is_reported(libc: FakeGlibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libc, "mallopt", lambda *args: 0)
    assert allocator.keep_freed_memory() == "malloc left as is (glibc refused mallopt)"


def test_the_plan_names_the_settings_and_the_way_out(libc: FakeGlibc) -> None:
    apply, description = allocator.allocator_plan()
    assert apply
    assert "mmap threshold 32 MiB, trim threshold 128 MiB" in description and "BT_MALLOC=system" in description


def test_this_machines_c_library_is_found_on_linux() -> None:
    """Not a stand-in: on Linux with glibc, bt finds mallopt (the suite runs on glibc in CI)."""
    import platform

    found: Any = allocator._glibc()
    if platform.libc_ver()[0] == "glibc":
        assert found is not None and hasattr(found, "mallopt")
    else:
        assert found is None

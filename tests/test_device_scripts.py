"""The GPU check scripts in benchmarks/ run: on this CPU-only suite, with ``--device cpu`` on one model type.

They are what BENCHMARKS.md's CUDA figures come from, and are run by hand on a machine with a GPU; this
keeps them from rotting between those runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "benchmarks"

pytest.importorskip("bt_plugins_encoders", reason="checks a BERT model, which the encoders pack converts")


def test_cuda_check_runs_every_strategy_and_dtype_on_the_device_given(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "cuda_check.py"), "--device", "cpu", "--types", "bert", "--no-bench",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    header, row = (line.split() for line in done.stdout.splitlines() if line.startswith(("MODEL TYPE", "bert ")))
    assert header[2:] == ["fp32", "auto", "fp32", "fused", "fp32", "packed", "fp32", "dense", "fp16", "auto",
                          "bf16", "auto", "fp16", "autocast", "bf16", "autocast"]  # fmt: skip
    assert row[0] == "bert" and row.count("ok") == 8  # the CPU's fused kernel has float32 and bfloat16
    assert "0 failure(s)" in done.stdout
    assert "===== bert fp16 auto: exit 0" in (tmp_path / "cuda-check.log").read_text()


def test_cuda_check_fails_on_a_check_that_fails(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "cuda_check.py"), "--device", "cpu", "--types", "not-a-model-type",
         "--no-bench", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "n/a" not in done.stdout  # "n/a" is only a forced strategy that declines a layer it cannot run
    assert "FAIL(3)" in done.stdout and "8 failure(s)" in done.stdout

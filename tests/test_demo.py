"""`bt demo`, the README's first command, on a tiny config so the test is quick."""

from __future__ import annotations

import json

import pytest

from bt_core.cli import main

pytest.importorskip("bt_plugins_encoders")

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 200,
}


def test_demo_reports_parity_and_speed_and_exits_zero(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny-bert.json"
    config.write_text(json.dumps(TINY_BERT))
    status = main(["demo", "--model", str(config), "--batch", "4", "--length", "16", "--runs", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "parity: outputs match on every real token" in out
    assert "vs sdpa" in out and "50%" in out


def test_demo_fails_when_the_tolerance_cannot_be_met(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny-bert.json"
    config.write_text(json.dumps(TINY_BERT))
    status = main(["demo", "--model", str(config), "--batch", "4", "--length", "16", "--runs", "1", "--atol", "0"])
    out = capsys.readouterr().out
    assert status == 1 and "DIFFER" in out

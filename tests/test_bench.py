"""``bt bench`` on a tiny config: structure, JSON, the command line. One run: no timing is asserted."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from bt_core import bench
from bt_core.cli import main

TINY = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "vocab_size": 200,
    "max_position_embeddings": 64,
}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def test_run_bench_returns_the_table_and_writes_json(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "result.json"
    result = bench.run_bench(
        str(tiny), batch=4, length=16, padding=[0.0, 0.5], runs=1, warmup=0, threads=1, json_path=out
    )
    assert set(result) == {"machine", "settings", "conversion", "rows"}
    assert result["machine"]["threads"] == 1
    assert result["settings"]["model_type"] == "bert"
    assert result["settings"]["command"].startswith(f"bt bench --model {tiny} --batch 4 --length 16 --padding 0,50")
    conversion = result["conversion"]
    assert conversion["seconds"] > 0
    assert 0 < conversion["param_bytes_after"] <= conversion["param_bytes_before"]
    assert [row["padding"] for row in result["rows"]] == [0.0, 0.5]
    for row in result["rows"]:
        for key in (
            "bt_s",
            "sdpa_s",
            "eager_s",
            "speedup_vs_sdpa",
            "speedup_vs_eager",
            "tokens_per_s",
            "roofline_s",
            "roofline_ratio",
            "gemm_flops_per_s",
        ):
            assert row[key] > 0, key
        assert len(row["samples"]["bt"]) == 1
    assert result["rows"][0]["real_tokens"] == 64
    assert result["rows"][1]["real_tokens"] == 32
    assert result["rows"][0]["strategies"] == ["dense"]
    assert result["rows"][1]["strategies"] == ["packed"]
    assert json.loads(out.read_text())["rows"][1]["padding"] == 0.5
    assert "[bt bench]" in capsys.readouterr().err  # progress


def test_forced_strategy_and_no_eager(tiny: Path) -> None:
    result = bench.run_bench(
        str(tiny), batch=2, length=8, padding=[0.25], runs=1, warmup=0, strategy="fused", eager=False, progress=False
    )
    row = result["rows"][0]
    assert row["strategies"] == ["fused"]
    assert "eager_s" not in row
    assert "--strategy fused" in result["settings"]["command"]


def test_table_has_every_column(tiny: Path) -> None:
    result = bench.run_bench(str(tiny), batch=2, length=8, padding=[0.5], runs=1, warmup=0, progress=False)
    table = bench.format_table(result)
    for column in ("padding", "bt ms", "tokens/s", "vs sdpa", "vs eager", "roofline", "strategy"):
        assert column in table
    assert "conversion" in table and "MiB" in table


def test_command_line(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.json"
    rc = main(
        [
            "bench",
            "--model",
            str(tiny),
            "--batch",
            "2",
            "--length",
            "8",
            "--padding",
            "0,50",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "vs sdpa" in captured.out
    assert "[bt bench] padding 50%" in captured.err
    assert len(json.loads(out.read_text())["rows"]) == 2


def test_command_line_errors(tmp_path: Path, capsys) -> None:
    assert main(["bench", "--model", str(tmp_path / "missing"), "--runs", "1"]) == 1
    assert "neither a shipped config" in capsys.readouterr().err
    assert main(["bench", "--padding", "half"]) == 2


def test_shipped_bert_base_config_is_bert_base() -> None:
    model, source = bench._load_model("bert-base")
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        768,
        12,
        12,
        3072,
    )
    assert "bert-base.json" in source


@pytest.mark.parametrize("padding", [0.0, 0.25, 0.5, 0.75])
def test_padded_lengths(padding: float) -> None:
    lengths = bench.padded_lengths(16, 128, padding)
    assert len(lengths) == 16
    assert sum(lengths) == round((1 - padding) * 128 * 16)
    assert min(lengths) >= 1 and max(lengths) <= 128
    if padding:
        assert max(lengths) < 128  # the longest row is shorter than the sequence, as in real batches
        assert len(set(lengths)) > 8  # spread, not constant


def test_padded_lengths_rejects_full_padding() -> None:
    with pytest.raises(ValueError):
        bench.padded_lengths(4, 8, 1.0)


def test_flops_count_only_real_tokens() -> None:
    from transformers import BertConfig

    config = BertConfig(**{k: v for k, v in TINY.items() if k != "model_type"})
    full = bench.encoder_flops(config, [8, 8])
    half = bench.encoder_flops(config, [4, 4])
    assert half < full / 2  # attention is quadratic
    assert full == 2 * (2.0 * 16 * (4 * 32 * 32 + 2 * 32 * 64) + 4.0 * 32 * 128)


def test_compile_times_compiled_original_against_compiled_converted(tiny: Path) -> None:
    result = bench.run_bench(
        str(tiny), batch=3, length=16, padding=[0.5], runs=1, warmup=1, threads=1, eager=False, compile_backend="eager"
    )
    assert result["settings"]["compile"] == "eager"
    assert result["settings"]["command"].endswith("--compile eager")
    (row,) = result["rows"]
    assert row["strategies"] == ["packed"], "converted layers run eagerly inside the compiled model"
    assert "compiled with backend 'eager'" in bench.format_table(result)


def test_a_seq2seq_model_is_benchmarked_by_its_encoder(tmp_path: Path) -> None:
    path = tmp_path / "t5.json"
    path.write_text(json.dumps({"model_type": "t5", "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
                                "num_heads": 4, "vocab_size": 200}))  # fmt: skip
    result = bench.run_bench(str(path), batch=3, length=16, padding=[0.5], runs=1, warmup=0, threads=1, eager=False)
    (row,) = result["rows"]
    assert row["strategies"] == ["packed"]
    assert (result["settings"]["layers"], result["settings"]["ffn"]) == (2, 64)

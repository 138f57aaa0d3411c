"""Task models over converted speech encoders: CTC and classification heads give the original's outputs on
padded batches; Whisper and Speech2Text convert their encoder only and ``generate`` gives the same tokens."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from bt_plugins_audio.adapters import LEGACY_CALLS

from bt_core import BetterTransformer
from bt_core._strategy import record_strategies
from bt_core.layer import clamp_float16
from bt_plugins_audio import examples

from .conftest import (
    SAMPLE_LENGTHS,
    assert_close_on_frames,
    build,
    convert_copy,
    converted_layers,
    frame_mask,
    run,
)

ATOL = 1e-5

HEADS = [
    pytest.param(examples.wav2vec2_config, {}, "Wav2Vec2ForCTC", id="wav2vec2-ctc"),
    pytest.param(examples.wav2vec2_config, {"stable": True}, "Wav2Vec2ForCTC", id="wav2vec2-stable-ctc"),
    pytest.param(examples.wav2vec2_config, {}, "Wav2Vec2ForSequenceClassification", id="wav2vec2-classifier"),
    pytest.param(examples.hubert_config, {"stable": True}, "HubertForSequenceClassification", id="hubert-classifier"),
    pytest.param(examples.data2vec_audio_config, {}, "Data2VecAudioForCTC", id="data2vec-audio-ctc"),
    pytest.param(examples.wavlm_config, {"stable": True}, "WavLMForCTC", id="wavlm-stable-ctc"),
]


@pytest.mark.parametrize(
    ("config", "overrides", "model_class", "padding"),
    [pytest.param(*head.values, "right", id=f"{head.id}-right") for head in HEADS]
    + [pytest.param(examples.wav2vec2_config, {}, "Wav2Vec2ForCTC", "left", id="wav2vec2-ctc-left")],
)
def test_heads_match_original_on_a_padded_batch(
    config: Any, overrides: dict[str, Any], model_class: str, padding: str
) -> None:
    original = build(config(**overrides), model_class)
    inputs = examples.raw_audio(SAMPLE_LENGTHS, left=padding == "left")
    expected = run(original, inputs).logits
    converted = convert_copy(original)
    with record_strategies(set()) as ran:
        actual = run(converted, inputs).logits
    if expected.dim() == 3:  # CTC: per frame
        assert ran == {"packed"}  # the frame mask is plain key padding: padded frames are not computed
        assert_close_on_frames(actual, expected, frame_mask(original, inputs, expected.shape[1]))
    else:  # classification: mean over real frames
        # transformers >= 5.2x has these heads always ask the encoder for every hidden state (and drop them);
        # recorded hidden states include padded positions, which only dense computes. 5.10 does not ask.
        assert ran == ({"packed"} if LEGACY_CALLS else {"dense"})
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_an_adapter_after_the_encoder_reads_padded_frames_so_padded_batches_run_dense() -> None:
    """``add_adapter=True`` puts strided convolutions after the encoder that read frames past a row's end."""
    original = build(examples.wav2vec2_config(add_adapter=True, output_hidden_size=32), "Wav2Vec2ForCTC")
    inputs = examples.raw_audio(SAMPLE_LENGTHS)
    expected = run(original, inputs).logits
    converted = convert_copy(original)
    with record_strategies(set()) as ran:
        actual = run(converted, inputs).logits
    assert ran == {"dense"}
    keep = original._get_feature_vector_attention_mask(expected.shape[1], inputs["attention_mask"], add_adapter=True)
    assert_close_on_frames(actual, expected, keep.bool())


SEQ2SEQ = [
    pytest.param("WhisperForConditionalGeneration", id="whisper"),
    pytest.param("Speech2TextForConditionalGeneration", id="speech_to_text"),
]


def _speech_batch(config: Any) -> dict[str, torch.Tensor]:
    if config.model_type == "whisper":
        return examples.whisper_inputs(config, 3)
    return examples.feature_frames((24, 15, 9), int(config.input_feat_per_channel), seed=2)


@pytest.mark.parametrize("model_class", SEQ2SEQ)
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_generate_gives_identical_tokens_and_only_the_encoder_is_converted(model_class: str, num_beams: int) -> None:
    config = examples.whisper_config() if model_class.startswith("Whisper") else examples.speech_to_text_config()
    original = build(config, model_class, seed=1)
    inputs = _speech_batch(original.config)
    kwargs = {"max_new_tokens": 6, "num_beams": num_beams, "do_sample": False}
    with torch.inference_mode():
        expected = original.generate(**inputs, **kwargs)
    converted = convert_copy(original)
    layers = converted_layers(converted)
    assert len(layers) == 2 and all("EncoderLayer" in layer.bt_layer_name for layer in layers)
    assert all(type(layer).__name__.endswith("DecoderLayer") for layer in converted.model.decoder.layers)
    with torch.inference_mode():
        actual = converted.generate(**inputs, **kwargs)
    assert torch.equal(actual, expected)
    restored = BetterTransformer.reverse(converted)
    assert not converted_layers(restored)


def test_whisper_model_encoder_output_matches_inside_the_full_model() -> None:
    original = build(examples.whisper_config(), "WhisperModel")
    inputs = {**examples.whisper_inputs(original.config, 2), "decoder_input_ids": torch.tensor([[3, 5, 7]] * 2)}
    expected = run(original, inputs)
    actual = run(convert_copy(original), inputs)
    torch.testing.assert_close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=0)


@pytest.mark.parametrize("strategy", [None, "dense", "reference"], ids=lambda s: s or "auto")
def test_whisper_float16_layer_outputs_are_clamped_as_the_original_clamps_them(strategy: str | None) -> None:
    """Whisper's encoder layers clamp float16 outputs to ``max - 1000``: a feed-forward bias that overflows the
    last layer's residual sum shows it (unclamped, the output would be infinite)."""
    original = build(examples.whisper_config(), "transformers.models.whisper.modeling_whisper:WhisperEncoder")
    with torch.no_grad():
        for layer in original.layers:  # the first pushes the residual near the limit, the second past it
            layer.fc2.bias[:4] = 6e4
    original.half()
    features = examples.whisper_inputs(original.config, 2)["input_features"].half()
    converted = convert_copy(original)
    outputs = []
    for layer, model, forced in ((original.layers[-1], original, None), (converted.layers[-1], converted, strategy)):
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda module, args, output, seen=seen: seen.append(output))
        run(model, {"input_features": features}, forced)
        handle.remove()
        outputs.append(seen[0])
    expected, actual = outputs
    limit = float(torch.tensor(torch.finfo(torch.float16).max - 1000, dtype=torch.float16))  # as float16 rounds it
    assert float(expected.max()) == limit
    assert bool(torch.isfinite(actual).all())
    assert torch.equal(actual == limit, expected == limit)


def test_the_float16_clamp_also_clamps_the_fused_paths_nested_batch_row_by_row() -> None:
    """The fused kernel hands back a nested tensor, which ``torch.clamp`` does not take: each row is clamped."""
    rows = [torch.full((3, 4), 6.5e4, dtype=torch.float16), torch.full((2, 4), -1.0, dtype=torch.float16)]
    rows[0][0, 0] = float("inf")
    clamped = clamp_float16(torch.nested.nested_tensor(rows), always=True).unbind()
    limit = float(torch.tensor(torch.finfo(torch.float16).max - 1000, dtype=torch.float16))
    assert [tuple(r.shape) for r in clamped] == [(3, 4), (2, 4)]
    assert bool((clamped[0] == limit).all()) and bool((clamped[1] == -1.0).all())
    wide = rows[0].float()
    assert clamp_float16(wide, always=True) is wide  # float32 and wider: returned as they are

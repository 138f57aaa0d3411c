"""Tiny configs and inputs of every speech encoder the pack converts (for ``bt_core.testing`` and ``bt check``).

Imported only when the conformance kit or a test asks: it imports torch and transformers.

Sizes: hidden 32, 2 layers, 4 heads, feed-forward 64. The wav2vec2-style feature extractor is two
convolutions (kernels 10 and 3, strides 5 and 2), so 200 raw samples give 19 frames; Whisper takes
``2 * max_source_positions`` = 32 mel frames of 8 bins; Speech2Text subsamples 8-bin filterbank frames
by 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import transformers

__all__ = [
    "SAMPLES",
    "data2vec_audio_config",
    "feature_inputs",
    "hubert_config",
    "raw_audio",
    "speech_to_text_config",
    "speech_to_text_inputs",
    "wav2vec2_config",
    "wavlm_config",
    "waveform_inputs",
    "whisper_config",
    "whisper_inputs",
]

#: Raw samples in an example utterance: 19 frames after the tiny feature extractor.
SAMPLES = 200

_TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
_FEATURE_EXTRACTOR: dict[str, Any] = {
    "conv_dim": (8, 8),
    "conv_kernel": (10, 3),
    "conv_stride": (5, 2),
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 4,
    # SpecAugment draws its masks with numpy in training: off, so that train-mode runs repeat exactly.
    "mask_time_prob": 0.0,
    "vocab_size": 12,
    "pad_token_id": 0,
    "classifier_proj_size": 16,
    "num_labels": 3,
}
_SEQ2SEQ: dict[str, Any] = {
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_layers": 2,
    "decoder_attention_heads": 4,
    "decoder_ffn_dim": 64,
    "max_target_positions": 16,
    "vocab_size": 99,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 3,
}


def _stable(stable: bool) -> dict[str, Any]:
    """The pre-norm ("stable layer norm") variant uses layer-normed convolutions, as large checkpoints do."""
    return {"do_stable_layer_norm": stable, "feat_extract_norm": "layer" if stable else "group"}


def wav2vec2_config(stable: bool = False, **overrides: Any) -> Any:
    """A tiny ``Wav2Vec2Config``: post-norm layers, or pre-norm ones when ``stable``."""
    return transformers.Wav2Vec2Config(**_TINY, **_FEATURE_EXTRACTOR, **_stable(stable), **overrides)


def hubert_config(stable: bool = False, **overrides: Any) -> Any:
    """A tiny ``HubertConfig``: post-norm layers, or pre-norm ones when ``stable``."""
    return transformers.HubertConfig(**_TINY, **_FEATURE_EXTRACTOR, **_stable(stable), **overrides)


def data2vec_audio_config(**overrides: Any) -> Any:
    """A tiny ``Data2VecAudioConfig`` (post-norm layers; its positional embedding is a stack of convolutions)."""
    extractor = {**_FEATURE_EXTRACTOR, "conv_pos_kernel_size": 5, "num_conv_pos_embeddings": 2}
    return transformers.Data2VecAudioConfig(**_TINY, **extractor, **overrides)


def wavlm_config(stable: bool = False, **overrides: Any) -> Any:
    """A tiny ``WavLMConfig``, for the refusal's tests."""
    return transformers.WavLMConfig(**_TINY, **_FEATURE_EXTRACTOR, **_stable(stable), num_buckets=16, **overrides)


def whisper_config(**overrides: Any) -> Any:
    """A tiny ``WhisperConfig``: 8 mel bins, 16 encoder positions (32 input frames), greedy-decodable."""
    return transformers.WhisperConfig(
        **_SEQ2SEQ,
        num_mel_bins=8,
        max_source_positions=16,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        **overrides,
    )


def speech_to_text_config(**overrides: Any) -> Any:
    """A tiny ``Speech2TextConfig``: 8 filterbank features per frame, two stride-2 convolutions."""
    return transformers.Speech2TextConfig(
        **_SEQ2SEQ,
        input_feat_per_channel=8,
        input_channels=1,
        conv_channels=16,
        conv_kernel_sizes=(5, 5),
        num_conv_layers=2,
        max_source_positions=64,
        **overrides,
    )


# -- inputs ---------------------------------------------------------------------------------------------


def raw_audio(
    lengths: Sequence[int], *, total: int | None = None, left: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``input_values`` of rows with ``lengths`` real samples each, zero-padded to ``total`` (default: the
    longest) on the right, or on the left when ``left``, with the ``attention_mask`` over samples a
    feature extractor gives."""
    total = total or max(lengths)
    generator = torch.Generator().manual_seed(seed)
    values = torch.zeros(len(lengths), total)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, length in enumerate(lengths):
        span = slice(total - length, total) if left else slice(0, length)
        values[row, span] = torch.randn(length, generator=generator)
        mask[row, span] = 1
    return {"input_values": values, "attention_mask": mask}


def feature_frames(
    lengths: Sequence[int], features: int, *, total: int | None = None, left: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Speech2Text's ``input_features`` ``(batch, frames, features)`` and their ``attention_mask``, rows of
    ``lengths`` real frames, zero-padded as :func:`raw_audio` pads samples."""
    total = total or max(lengths)
    generator = torch.Generator().manual_seed(seed)
    values = torch.zeros(len(lengths), total, features)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, length in enumerate(lengths):
        span = slice(total - length, total) if left else slice(0, length)
        values[row, span] = torch.randn(length, features, generator=generator)
        mask[row, span] = 1
    return {"input_features": values, "attention_mask": mask}


def waveform_inputs(config: Any, batch_size: int) -> dict[str, torch.Tensor]:
    """The kit's inputs for wav2vec2-style models: ``input_values`` without a mask (see the README: the
    kit compares outputs on the positions of an ``attention_mask`` of the output's length, and an audio
    mask is over samples; padded batches are tested on real frames in tests/audio)."""
    return {"input_values": raw_audio([SAMPLES] * batch_size)["input_values"]}


def whisper_inputs(config: Any, batch_size: int) -> dict[str, torch.Tensor]:
    """Mel features of the one length Whisper's encoder takes (``2 * max_source_positions``); no mask."""
    generator = torch.Generator().manual_seed(0)
    frames = 2 * int(config.max_source_positions)
    return {"input_features": torch.randn(batch_size, int(config.num_mel_bins), frames, generator=generator)}


def speech_to_text_inputs(config: Any, batch_size: int) -> dict[str, torch.Tensor]:
    """The kit's inputs for Speech2Text's encoder: 24 filterbank frames per row, no mask (as for waveforms)."""
    return {"input_features": feature_frames([24] * batch_size, int(config.input_feat_per_channel))["input_features"]}


def feature_inputs(config: Any, lengths: Sequence[int], *, left: bool = False, seed: int = 0) -> dict[str, Any]:
    """A padded batch for ``config``'s model type: raw samples (wav2vec2 family) or filterbank frames."""
    if config.model_type == "speech_to_text":
        return feature_frames(lengths, int(config.input_feat_per_channel), left=left, seed=seed)
    return raw_audio(lengths, left=left, seed=seed)

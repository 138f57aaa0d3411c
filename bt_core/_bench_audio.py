"""``bt bench``'s audio batches, built as transformers' feature extractors build them.

wav2vec2-family models (``input_values``) read raw 16 kHz samples; ``--length`` and the row lengths
count encoder *frames*, and each row gets the samples the convolutional front end turns into exactly
that many frames. Models whose front end uses layer norm (``feat_extract_norm == "layer"``: the
"stable layer norm" large models, data2vec-audio) are given an attention mask on the samples, from
which the model derives its frame mask; group-norm base models are fed zero-padded audio without a
mask, as their feature extractor does (``return_attention_mask=False``), so every frame is work.

Whisper (``input_features``) always pads to 30 s of log-mel features and takes no mask: no padding.
Speech2Text (``input_features`` too) reads filter-bank frames with an attention mask, as its feature
extractor gives them; each row gets the frames its stride-2 convolutions turn into its encoder frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The sampling rate of the wav2vec2 family's feature extractors, to report rows in seconds.
SAMPLING_RATE = 16_000

__all__ = ["SAMPLING_RATE", "audio_inputs", "audio_samples", "describe_audio", "filterbank_frames", "takes_audio_mask"]


def _conv_stack(config: Any) -> list[tuple[int, int]]:
    kernels = list(getattr(config, "conv_kernel", [10, 3, 3, 3, 3, 2, 2]))
    strides = list(getattr(config, "conv_stride", [5, 2, 2, 2, 2, 2, 2]))
    return list(zip(kernels, strides, strict=True))


def _check_frames(frames: int) -> None:
    if frames < 1:
        raise ValueError(f"an audio row needs at least one frame, not {frames}")


def audio_samples(config: Any, frames: int) -> int:
    """The fewest raw samples the front end (unpadded convolutions) turns into ``frames`` frames."""
    _check_frames(frames)
    stack = _conv_stack(config)
    receptive = 1  # samples one output frame sees, walking the stack back from the top
    for kernel, stride in reversed(stack):
        receptive = (receptive - 1) * stride + kernel
    hop = 1
    for _, stride in stack:
        hop *= stride
    return receptive + (frames - 1) * hop


def takes_audio_mask(config: Any) -> bool:
    """Whether a wav2vec2-family model is given an attention mask: its feature extractor returns one
    for layer-norm front ends only (group-norm ones were trained on zero padding without a mask)."""
    return getattr(config, "feat_extract_norm", "layer") == "layer"


def _is_whisper_like(config: Any) -> bool:
    return hasattr(config, "num_mel_bins") and hasattr(config, "max_source_positions")


def _reads_filterbanks(model: Any) -> bool:
    """Speech2Text-style: filter-bank frames in, subsampled by ``num_conv_layers`` stride-2 convolutions."""
    features = model.main_input_name == "input_features"
    return features and hasattr(model.config, "input_feat_per_channel") and hasattr(model.config, "num_conv_layers")


def filterbank_frames(config: Any, frames: int) -> int:
    """The fewest filter-bank frames Speech2Text's subsampler turns into ``frames`` encoder frames: each of
    its ``num_conv_layers`` convolutions has stride 2 and keeps ``ceil(n / 2)`` of ``n`` frames."""
    _check_frames(frames)
    for _ in range(int(config.num_conv_layers)):
        frames = 2 * frames - 1
    return frames


def audio_inputs(
    model: Any, length: int, rows: Sequence[int], padded: bool, device: Any, dtype: Any, generator: Any
) -> tuple[dict, list[int]]:
    """The audio batch and the frames of every row the roofline counts (real frames when masked,
    every frame when the model attends to the zero padding too)."""
    import torch

    config = model.config
    batch = len(rows)
    if _reads_filterbanks(model):
        # Zero-padded filter-bank frames and their mask, as Speech2Text's feature extractor gives them.
        features = int(config.input_feat_per_channel) * int(getattr(config, "input_channels", 1))
        lengths = [filterbank_frames(config, n) for n in rows]
        values, real = _zero_padded(filterbank_frames(config, length), lengths, (features,), generator)
        inputs = {"input_features": values.to(device=device, dtype=dtype), "attention_mask": real.long().to(device)}
        return inputs, list(rows)
    if model.main_input_name == "input_features":
        if not _is_whisper_like(config):
            raise ValueError(
                f"bt bench feeds log-mel features to Whisper- and Speech2Text-style models only; "
                f"{type(model).__name__} (model type {config.model_type!r}) is neither"
            )
        if padded:
            raise ValueError("Whisper pads every input to 30 s and takes no mask: use --padding 0 and no --lengths")
        if length != int(config.max_source_positions):
            raise ValueError(
                f"Whisper's encoder ({config.model_type!r}) always runs max_source_positions = "
                f"{config.max_source_positions} frames (30 s): use --length {config.max_source_positions}"
            )
        mels = int(config.num_mel_bins)
        frames = 2 * length  # the encoder's strided convolution halves them
        features = torch.randn(batch, mels, frames, generator=generator).to(device=device, dtype=dtype)
        return {"input_features": features}, [frames // 2] * batch
    samples = [audio_samples(config, n) for n in rows]
    audio, real = _zero_padded(audio_samples(config, length), samples, (), generator)
    inputs: dict[str, Any] = {"input_values": audio.to(device=device, dtype=dtype)}
    if takes_audio_mask(config):
        inputs["attention_mask"] = real.long().to(device)
        return inputs, list(rows)
    return inputs, [length] * batch


def _zero_padded(total: int, lengths: list[int], inner: tuple[int, ...], generator: Any) -> tuple[Any, Any]:
    """Random ``(rows, total, *inner)`` values, zero (silence, as feature extractors pad) past each row's
    length, and the ``(rows, total)`` bool mask of its real steps."""
    import torch

    real = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    values = torch.randn(len(lengths), total, *inner, generator=generator)
    return values * real.view(*real.shape, *(1,) * len(inner)), real


def describe_audio(model: Any) -> str:
    """One line on how the audio batch is fed, for the table and the JSON."""
    config = model.config
    if _reads_filterbanks(model):
        return (
            "filter-bank frames with an attention mask (as Speech2Text's feature extractor); the roofline counts "
            "each row's real encoder frames"
        )
    if model.main_input_name == "input_features":
        return "log-mel features padded to 30 s, no mask (as Whisper's feature extractor); no padding to skip"
    if takes_audio_mask(config):
        return (
            f"raw {SAMPLING_RATE // 1000} kHz audio with an attention mask on the samples (layer-norm front end); "
            "the roofline counts each row's real frames"
        )
    return (
        f"raw {SAMPLING_RATE // 1000} kHz audio zero-padded without a mask (group-norm front end, as its feature "
        "extractor feeds it): every frame is attended, so the roofline counts every frame"
    )

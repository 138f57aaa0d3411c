"""What a converted speech encoder records on a padded batch: requested hidden states and attention
probabilities equal the original's on real frames (transformers 5.10 records hidden states in the encoder's
own loop, 5.2x with hooks), and gradient checkpointing trains with the original's gradients."""

from __future__ import annotations

import pytest
import torch

from .conftest import ARCHS, ATOL, Arch, assert_close_on_frames, convert_copy, frame_mask, run

#: One of each layer family: post-norm, pre-norm, WavLM's gated bias, the seq2seq encoders.
RECORDED = [a for a in ARCHS if a.id in {"wav2vec2", "hubert-stable", "wavlm", "speech_to_text", "whisper"}]


def _recorded(arch: Arch, what: str) -> tuple[object, object, torch.Tensor]:
    original = arch.build()
    original.set_attn_implementation("eager")  # transformers' sdpa attention records no probabilities
    inputs = {**arch.batch(original.config, "right"), what: True}
    expected = run(original, inputs)
    actual = run(convert_copy(original), inputs)
    return actual, expected, frame_mask(original, inputs, expected.last_hidden_state.shape[1])


@pytest.mark.parametrize("arch", RECORDED, ids=lambda a: a.id)
def test_requested_hidden_states_match_original_on_real_frames(arch: Arch) -> None:
    actual, expected, keep = _recorded(arch, "output_hidden_states")
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    for got, want in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert_close_on_frames(got, want, keep)


@pytest.mark.parametrize("arch", RECORDED, ids=lambda a: a.id)
def test_requested_attentions_match_original_between_real_frames(arch: Arch) -> None:
    """WavLM records head-averaged probabilities (broadcast to every head), as its attention computes them."""
    actual, expected, keep = _recorded(arch, "output_attentions")
    assert len(actual.attentions) == len(expected.attentions) == 2
    pairs = keep[:, None, :, None] & keep[:, None, None, :]  # from real frames to real frames
    for got, want in zip(actual.attentions, expected.attentions, strict=True):
        assert got.shape == want.shape
        assert ((got - want).abs() * pairs).max().item() <= ATOL


@pytest.mark.parametrize("arch", [a for a in RECORDED if a.id in {"wav2vec2", "wavlm"}], ids=lambda a: a.id)
def test_gradient_checkpointing_trains_with_the_original_gradients(arch: Arch) -> None:
    no_dropout = {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0}
    original = arch.build(**no_dropout).train()
    converted = convert_copy(original).train()
    # transformers 5.2x renamed it activation_checkpointing_enable (the old name warns); 5.10 has the old one only.
    getattr(converted, "activation_checkpointing_enable", converted.gradient_checkpointing_enable)()
    inputs = arch.batch(original.config, "right")
    for model in (original, converted):
        torch.manual_seed(0)
        hidden = model(**inputs).last_hidden_state
        keep = frame_mask(original, inputs, hidden.shape[1])
        (hidden.sum(-1) * keep).sum().backward()
    assert all(layer.gradient_checkpointing for layer in converted.encoder.layers)
    reference = dict(original.named_parameters())
    outside = [(n, p) for n, p in converted.named_parameters() if ".layers." not in n and p.grad is not None]
    assert outside
    for name, parameter in outside:
        torch.testing.assert_close(parameter.grad, reference[name].grad, atol=ATOL, rtol=1e-4, msg=name)

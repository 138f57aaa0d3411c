"""Converted encoders compute what the originals compute, under every strategy that may run them."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest
import torch

import bt_core
from bt_core import BetterTransformerError

from .conftest import CASES, Case, assert_close_on_valid, build, convert_copy, make_batch, strategy_params

_PAIRS: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
_EXPECTED: dict[tuple[str, str, bool], tuple[dict[str, torch.Tensor], torch.Tensor]] = {}


def original_and_converted(case: Case) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The case's original model and a converted copy, built once per module (inference never mutates)."""
    if case.id not in _PAIRS:
        original = build(case)
        _PAIRS[case.id] = (original, convert_copy(original))
    return _PAIRS[case.id]


def strategy_context(strategy: str) -> Any:
    return contextlib.nullcontext() if strategy == "default" else bt_core.force_strategy(strategy)


def inputs_and_expected(case: Case, kind: str, left: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A batch and the original model's output on it, computed once per module."""
    key = (case.id, kind, left)
    if key not in _EXPECTED:
        original, _ = original_and_converted(case)
        inputs = make_batch(original.config, kind, left=left)
        with torch.inference_mode():
            _EXPECTED[key] = (inputs, original(**inputs).last_hidden_state)
    return _EXPECTED[key]


def check_batch(case: Case, strategy: str, kind: str, *, left: bool = False) -> None:
    _, converted = original_and_converted(case)
    inputs, expected = inputs_and_expected(case, kind, left)
    with torch.inference_mode():
        with strategy_context(strategy):
            actual = converted(**inputs).last_hidden_state
    assert_close_on_valid(actual, expected, inputs["attention_mask"])


@pytest.mark.parametrize(("case", "strategy"), strategy_params())
def test_padded_batch_matches_original_on_valid_tokens(case: Case, strategy: str) -> None:
    check_batch(case, strategy, "padded")


@pytest.mark.parametrize(("case", "strategy"), strategy_params())
def test_unpadded_batch_matches_original(case: Case, strategy: str) -> None:
    check_batch(case, strategy, "unpadded")


@pytest.mark.parametrize(("case", "strategy"), strategy_params())
def test_batch_whose_longest_row_is_shorter_than_padded_length_matches_original(case: Case, strategy: str) -> None:
    check_batch(case, strategy, "short")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_left_padded_batch_matches_original_with_default_strategy(case: Case) -> None:
    check_batch(case, "default", "padded", left=True)


@pytest.mark.parametrize("case", [c for c in CASES if not c.fused], ids=lambda c: c.id)
def test_forcing_fused_kernel_is_refused_where_it_cannot_compute_the_layer(case: Case) -> None:
    original, converted = original_and_converted(case)
    inputs = make_batch(original.config, "padded")
    assert case.not_fused_because, "every case the kernel cannot run names why"
    with torch.inference_mode(), bt_core.force_strategy("fused"):
        with pytest.raises(BetterTransformerError, match=re.escape(case.not_fused_because)):
            converted(**inputs)


def test_albert_declares_its_real_activation_and_keeps_its_layer_shared() -> None:
    (albert,) = [c for c in CASES if c.id == "albert"]
    original, converted = original_and_converted(albert)
    groups = converted.encoder.albert_layer_groups
    (layer,) = groups[0].albert_layers
    assert layer.activation == "gelu_new"
    assert not layer.kernel_computes_activation
    # One converted module, called for both of the model's layers.
    assert original.config.num_hidden_layers == 2 and len(groups) == 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_requested_attentions_and_hidden_states_match_original(case: Case) -> None:
    """With eager attention the original returns its attention probabilities; the converted model
    returns the same ones (reference path), and the same hidden states of every layer."""
    original = build(case, attn_implementation="eager")
    converted = convert_copy(original)
    inputs = make_batch(original.config, "padded")
    mask = inputs["attention_mask"]
    with torch.inference_mode():
        expected = original(**inputs, output_attentions=True, output_hidden_states=True)
        actual = converted(**inputs, output_attentions=True, output_hidden_states=True)
    assert len(actual.hidden_states) == len(expected.hidden_states)
    for got, want in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert_close_on_valid(got, want, mask)
    # One entry per layer call (ALBERT calls its shared layers once per repeat).
    assert len(actual.attentions) == len(expected.attentions) > 0
    rows = mask.bool()[:, None, :, None].expand_as(expected.attentions[0])
    for got, want in zip(actual.attentions, expected.attentions, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got[rows], want[rows], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_requested_hidden_states_alone_match_original(case: Case) -> None:
    """Hidden states without attentions: RemBERT and TAPAS record them between layers themselves,
    so no layer may hand a packed or nested batch to the next one there."""
    original, converted = original_and_converted(case)
    inputs = make_batch(original.config, "padded")
    with torch.inference_mode():
        expected = original(**inputs, output_hidden_states=True)
        actual = converted(**inputs, output_hidden_states=True)
    assert len(actual.hidden_states) == len(expected.hidden_states) > 1
    for got, want in zip(actual.hidden_states, expected.hidden_states, strict=True):
        assert_close_on_valid(got, want, inputs["attention_mask"])


def test_forcing_fused_kernel_on_a_left_padded_batch_is_refused() -> None:
    """The nested kernel needs right padding; the default strategy takes left padding exactly instead."""
    (bert,) = [c for c in CASES if c.id == "bert"]
    original, converted = original_and_converted(bert)
    inputs = make_batch(original.config, "padded", left=True)
    with torch.inference_mode(), bt_core.force_strategy("fused"):
        with pytest.raises(BetterTransformerError, match="padding is not on the right"):
            converted(**inputs)

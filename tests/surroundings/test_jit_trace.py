"""``torch.jit.trace`` of a converted model: the traced program is right for every padding layout of
the traced shape, not only the one it was traced with."""

from __future__ import annotations

import warnings

import pytest
import torch

from bt_core import BetterTransformer

from .conftest import OTHER_LENGTHS, UNPADDED, LastHiddenState, assert_close_on_real, batch, build_bert, run


def trace(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(
            LastHiddenState(model), (inputs["input_ids"], inputs["attention_mask"]), check_trace=False, strict=False
        )


@pytest.mark.parametrize("lengths", [None, OTHER_LENGTHS, UNPADDED], ids=["traced-batch", "other-padding", "unpadded"])
def test_traced_converted_model_matches_original(lengths: tuple | None) -> None:
    model = build_bert()
    traced_on = batch(model.config)
    inputs = traced_on if lengths is None else batch(model.config, lengths)
    expected = run(model, inputs).last_hidden_state
    with torch.no_grad():  # tracing records no autograd; inference_mode tensors cannot enter a trace
        traced = trace(BetterTransformer.transform(model, keep_original_model=True), traced_on)
        actual = traced(inputs["input_ids"], inputs["attention_mask"])
    assert_close_on_real(actual, expected, inputs["attention_mask"])


def test_traced_original_model_matches_original_on_other_padding() -> None:
    # The harness: transformers' BERT itself traces to a program that is right for any padding layout.
    model = build_bert()
    inputs = batch(model.config, OTHER_LENGTHS)
    with torch.no_grad():
        actual = trace(model, batch(model.config))(inputs["input_ids"], inputs["attention_mask"])
    assert_close_on_real(actual, run(model, inputs).last_hidden_state, inputs["attention_mask"])

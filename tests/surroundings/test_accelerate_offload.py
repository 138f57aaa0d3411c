"""accelerate's ``cpu_offload``: converting an offloaded model is refused before anything is touched
(its weights live in accelerate's hooks, on the meta device in the model); converting first and
offloading after is the supported order, and matches the original."""

from __future__ import annotations

import re

import pytest
from accelerate import cpu_offload

from bt_core import BetterTransformer, BetterTransformerError

from .conftest import (
    OTHER_LENGTHS,
    assert_close_on_real,
    assert_unchanged,
    batch,
    build_bert,
    converted_layers,
    run,
    snapshot,
)


@pytest.mark.parametrize("called", [True, False], ids=["after-one-call", "fresh"])
def test_offloaded_model_is_refused_unchanged_saying_to_convert_before_offloading(called: bool) -> None:
    model = build_bert()
    inputs = batch(model.config)
    cpu_offload(model, execution_device="cpu")
    if called:
        run(model, inputs)
    expected = run(model, inputs)
    before = snapshot(model)
    with pytest.raises(BetterTransformerError, match=r"(?i)accelerate|offload") as refusal:
        BetterTransformer.transform(model)
    message = str(refusal.value)
    assert re.search(r"(?i)before", message) and re.search(r"(?i)convert|transform", message), message
    assert_unchanged(model, before, inputs, expected)


def test_converting_then_offloading_matches_original() -> None:
    model = build_bert()
    layouts = [batch(model.config), batch(model.config, OTHER_LENGTHS)]
    expected = [run(model, inputs) for inputs in layouts]
    BetterTransformer.transform(model)
    cpu_offload(model, execution_device="cpu")
    assert converted_layers(model)
    for inputs, original in zip(layouts, expected, strict=True):
        actual = run(model, inputs)
        assert_close_on_real(actual.last_hidden_state, original.last_hidden_state, inputs["attention_mask"])
        assert_close_on_real(actual.pooler_output, original.pooler_output)

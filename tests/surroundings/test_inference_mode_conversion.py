"""Converting inside ``torch.inference_mode()``: the layers whose adapters derive weights (DINOv2's and
BEiT's folded layer scales) as well as plain ones convert, match the original, and reverse bit for bit."""

from __future__ import annotations

import pytest
import torch

from bt_core import BetterTransformer

from .conftest import (
    assert_close_on_real,
    assert_state_dict_identical,
    batch,
    build_bert,
    build_vision,
    converted_layers,
    pixel_batch,
    run,
    snapshot,
)

MODELS = ["dinov2", "beit", "data2vec_vision", "bert"]


def model_and_inputs(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor | None]:
    if name == "bert":
        model = build_bert()
        inputs = batch(model.config)
        return model, inputs, inputs["attention_mask"]
    model = build_vision(name)
    return model, pixel_batch(model), None


@pytest.mark.parametrize("reverse_inside", [True, False], ids=["reverse-inside", "reverse-outside"])
@pytest.mark.parametrize("name", MODELS)
def test_conversion_inside_inference_mode_matches_and_reverses_bit_for_bit(name: str, reverse_inside: bool) -> None:
    model, inputs, mask = model_and_inputs(name)
    expected = run(model, inputs)
    before = snapshot(model)
    with torch.inference_mode():
        BetterTransformer.transform(model)
        assert converted_layers(model)
        actual = model(**inputs)
        if reverse_inside:
            BetterTransformer.reverse(model)
    assert_close_on_real(actual.last_hidden_state, expected.last_hidden_state, mask)
    assert_close_on_real(actual.pooler_output, expected.pooler_output)
    if not reverse_inside:
        assert_close_on_real(run(model, inputs).last_hidden_state, expected.last_hidden_state, mask)
        BetterTransformer.reverse(model)
    assert not converted_layers(model)
    assert_state_dict_identical(model, before)
    assert torch.equal(run(model, inputs).last_hidden_state, expected.last_hidden_state)

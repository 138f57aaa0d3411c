"""``reverse`` gives back the original layers, bit for bit."""

from __future__ import annotations

import pytest
import torch

from bt_core import BetterTransformer

from .conftest import CASES, Case, build, converted_layers, make_batch


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reverse_round_trip_restores_bit_identical_state_dict(case: Case) -> None:
    model = build(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_types = {n: type(m) for n, m in model.named_modules()}
    inputs = make_batch(model.config, "padded")
    with torch.inference_mode():
        expected = model(**inputs).last_hidden_state

    converted = BetterTransformer.transform(model)  # in place
    assert converted is model and converted_layers(model)
    restored = BetterTransformer.reverse(model)

    assert not converted_layers(restored)
    assert {n: type(m) for n, m in restored.named_modules()} == layer_types
    after = restored.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key
    with torch.inference_mode():
        assert torch.equal(restored(**inputs).last_hidden_state, expected)


@pytest.mark.parametrize("case", [c for c in CASES if c.model_type == "bert"], ids=lambda c: c.id)
def test_in_place_conversion_shares_weights_instead_of_copying_them(case: Case) -> None:
    model = build(case)
    count = sum(p.numel() for p in model.parameters())
    BetterTransformer.transform(model)
    assert sum(p.numel() for p in model.parameters()) == count

"""``reverse`` gives back the original layers, bit for bit."""

from __future__ import annotations

import pytest
import torch

from bt_core import BetterTransformer

from .conftest import CASES, Case, assert_close_on_valid, build, converted_layers, make_batch


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


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.id in ("bert", "distilbert", "albert", "xlm-roberta-xl")], ids=lambda c: c.id
)
def test_reverse_carries_weights_changed_after_conversion_back_to_the_original_names(case: Case) -> None:
    """Fine-tune the converted model (here: one SGD step), reverse, and the original layout holds the
    new weights: q/k/v are the slices of the fused in_proj, the rest the shared tensors themselves."""
    from .conftest import zero_dropout_overrides

    model = build(case, **zero_dropout_overrides(case)).train()
    BetterTransformer.transform(model)
    inputs = make_batch(model.config, "padded")
    model(**inputs).last_hidden_state.pow(2).mean().backward()
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param -= 0.1 * param.grad
    layer_name, layer = converted_layers(model)[0]
    trained_in_proj = layer.in_proj_weight.detach().clone()
    trained_linear1 = layer.linear1_weight.detach().clone()
    model.eval()
    with torch.inference_mode():
        expected = model(**inputs).last_hidden_state

    BetterTransformer.reverse(model)
    original = model.get_submodule(layer_name)
    paths = type(layer).PATHS
    q, k, v = (original.get_submodule(paths[role][0]).weight for role in ("query", "key", "value"))
    assert torch.equal(torch.cat([q, k, v]), trained_in_proj)
    assert torch.equal(original.get_submodule(paths["feed-forward input"][0]).weight, trained_linear1)
    with torch.inference_mode():
        assert_close_on_valid(model(**inputs).last_hidden_state, expected, inputs["attention_mask"])

"""The reference path: training mode and autograd give the original model's outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from bt_core import BetterTransformerBaseLayer
from bt_core.layer import FUSED_PARAMETERS

from .conftest import (
    CASES,
    Case,
    assert_close_on_valid,
    build,
    convert_copy,
    converted_layers,
    make_batch,
    zero_dropout_overrides,
)


def _loss(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # A fixed random projection: a plain sum of layer-norm outputs has (almost) no gradient.
    weights = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(3))
    return ((hidden @ weights) * mask).sum()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_train_mode_without_dropout_matches_original_and_gradients_reach_every_fused_parameter(case: Case) -> None:
    original = build(case, **zero_dropout_overrides(case)).train()
    converted = convert_copy(original)
    assert converted.training and all(layer.training for _, layer in converted_layers(converted))
    inputs = make_batch(original.config, "padded")
    mask = inputs["attention_mask"]

    expected = original(**inputs).last_hidden_state
    actual = converted(**inputs).last_hidden_state
    assert_close_on_valid(actual, expected, mask)

    _loss(expected, mask).backward()
    _loss(actual, mask).backward()

    # Every fused parameter that requires grad gets the original's gradient (q/k/v concatenated).
    for name, layer in converted_layers(converted):
        original_layer = original.get_submodule(name)
        for attr in FUSED_PARAMETERS:
            param = getattr(layer, attr)
            if param is None or not param.requires_grad:  # None: a bias the original lacks
                continue
            assert param.grad is not None, f"{name}.{attr} got no gradient"
            assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, f"{name}.{attr}"
        # Each original parameter's gradient is where the restore plan says its value lives.
        shared, sliced, _ = layer._bt_restore_plan
        for pname, attr in shared.items():
            expected_grad = original_layer.get_parameter(pname).grad
            torch.testing.assert_close(getattr(layer, attr).grad, expected_grad, atol=1e-5, rtol=1e-4, msg=pname)
        for pname, (attr, start, end) in sliced.items():
            expected_grad = original_layer.get_parameter(pname).grad
            actual_grad = getattr(layer, attr).grad[start:end]
            torch.testing.assert_close(actual_grad, expected_grad, atol=1e-5, rtol=1e-4, msg=f"{name}.{pname}")
    # And the parameters outside the converted layers (embeddings, pooler) get the same gradients.
    originals = dict(original.named_parameters())
    for pname, param in converted.named_parameters():
        if param.grad is not None and pname in originals:
            torch.testing.assert_close(param.grad, originals[pname].grad, atol=1e-5, rtol=1e-4, msg=pname)


def test_padding_is_honoured_on_the_reference_path() -> None:
    """A padded row's valid outputs equal the same row run alone without padding."""
    (bert,) = [c for c in CASES if c.id == "bert"]
    converted = convert_copy(build(bert, **zero_dropout_overrides(bert)).train())
    inputs = make_batch(converted.config, "padded")
    length = int(inputs["attention_mask"][1].sum())
    batched = converted(**inputs).last_hidden_state[1, :length]
    alone = converted(
        input_ids=inputs["input_ids"][1:2, :length], attention_mask=inputs["attention_mask"][1:2, :length]
    ).last_hidden_state[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


# Layers whose original applies hidden dropout to one residual branch only, and that branch.
ONE_BRANCH_DROPOUT = {
    "distilbert": ("dropout", "attention"),
    "xlm-roberta-xl": ("hidden_dropout_prob", "feed_forward"),
    "albert": ("hidden_dropout_prob", "feed_forward"),
}


@pytest.mark.parametrize("model_type", sorted(ONE_BRANCH_DROPOUT))
def test_training_drops_out_only_the_branch_the_original_drops_out(model_type: str) -> None:
    case = next(c for c in CASES if c.id == model_type)
    field, undropped = ONE_BRANCH_DROPOUT[model_type]
    original = build(case, **{field: 0.1})
    converted = convert_copy(original)
    inputs = make_batch(original.config, "padded")
    with torch.inference_mode():
        assert_close_on_valid(
            converted(**inputs).last_hidden_state, original(**inputs).last_hidden_state, inputs["attention_mask"]
        )
    layers = [m for m in converted.modules() if isinstance(m, BetterTransformerBaseLayer)]
    dropped = "feed_forward" if undropped == "attention" else "attention"
    assert all(layer.branch_dropout(undropped) == 0.0 for layer in layers)
    assert all(layer.branch_dropout(dropped) == 0.1 for layer in layers)
    out = converted.train()(**inputs).last_hidden_state
    assert out.requires_grad and torch.isfinite(out).all()


def test_training_with_dropout_on_both_branches_runs() -> None:
    (bert,) = [c for c in CASES if c.id == "bert"]
    converted = convert_copy(build(bert, hidden_dropout_prob=0.1).train())
    inputs = make_batch(converted.config, "padded")
    out = converted(**inputs).last_hidden_state
    assert out.requires_grad and torch.isfinite(out).all()

"""PEFT LoRA adapters inside a converted model: the LoRA update is computed, merged or not, whether the
``PeftModel`` or its base model is converted; ``reverse`` gives the LoRA modules back; LoRA trains."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear

from bt_core import BetterTransformer

from .conftest import (
    OTHER_LENGTHS,
    assert_close_on_real,
    assert_state_dict_identical,
    batch,
    build_bert,
    converted_layers,
    run,
    snapshot,
)

TARGETS = {
    "query-value": ["query", "value"],
    "all-linears": ["query", "key", "value", "dense"],
}


def lora_model(targets: str) -> PeftModel:
    """A tiny BERT with LoRA on ``targets``; ``init_lora_weights=False`` makes lora_B non-zero, so the
    update changes the outputs."""
    config = LoraConfig(target_modules=TARGETS[targets], r=4, lora_alpha=8, init_lora_weights=False)
    model = get_peft_model(build_bert(), config).eval()
    inputs = batch(model.config)
    bare = model.get_base_model()
    with model.disable_adapter():
        without = run(bare, inputs).last_hidden_state
    assert (run(bare, inputs).last_hidden_state - without).abs().max() > 1e-2, "the LoRA update does nothing"
    return model


def to_convert(model: PeftModel, what: str) -> torch.nn.Module:
    return model if what == "peft-model" else model.base_model.model


@pytest.mark.parametrize("what", ["peft-model", "base-model"])
@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("targets", list(TARGETS))
def test_lora_model_converts_and_matches_unconverted_peft_model(targets: str, merged: bool, what: str) -> None:
    model = lora_model(targets)
    if merged:
        model.merge_adapter()
    padded, other = batch(model.config), batch(model.config, OTHER_LENGTHS)
    expected = [run(model, inputs) for inputs in (padded, other)]
    converted = BetterTransformer.transform(to_convert(model, what))
    assert converted_layers(converted)
    for inputs, original in zip((padded, other), expected, strict=True):
        actual = run(converted, inputs)
        assert_close_on_real(actual.last_hidden_state, original.last_hidden_state, inputs["attention_mask"])
        assert_close_on_real(actual.pooler_output, original.pooler_output)


@pytest.mark.parametrize("what", ["peft-model", "base-model"])
@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("targets", list(TARGETS))
def test_reverse_gives_back_the_lora_modules_and_a_bit_identical_state_dict(
    targets: str, merged: bool, what: str
) -> None:
    model = lora_model(targets)
    if merged:
        model.merge_adapter()
    inputs = batch(model.config)
    expected = run(model, inputs).last_hidden_state
    before = snapshot(model)
    BetterTransformer.reverse(BetterTransformer.transform(to_convert(model, what)))
    for layer in model.base_model.model.encoder.layer:
        for name in TARGETS[targets][:3]:
            assert type(getattr(layer.attention.self, name)) is LoraLinear, f"{name} is no longer a LoRA Linear"
    assert_state_dict_identical(model, before)
    assert torch.equal(run(model, inputs).last_hidden_state, expected)
    if merged:  # the adapter is still separable: unmerging gives the base model's weights back
        model.unmerge_adapter()
        assert_close_on_real(run(model, inputs).last_hidden_state, expected, inputs["attention_mask"], atol=1e-4)


@pytest.mark.parametrize("what", ["peft-model", "base-model"])
@pytest.mark.parametrize("targets", list(TARGETS))
def test_lora_parameters_train_after_conversion_with_the_original_gradients(targets: str, what: str) -> None:
    model = lora_model(targets)
    original = copy.deepcopy(model)
    inputs = batch(model.config)
    keep = inputs["attention_mask"].bool()
    # Named before conversion: the converted model must train these very parameter objects.
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    BetterTransformer.transform(to_convert(model, what))
    held = {id(p) for p in model.parameters()}
    assert all(id(p) in held for p in lora.values()), "LoRA parameters left model.parameters() (no optimizer sees them)"

    def lora_gradients(peft_model: PeftModel, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        peft_model.train()
        out = peft_model(**inputs)
        loss = out.last_hidden_state[keep].pow(2).mean() + out.pooler_output.pow(2).mean()
        loss.backward()
        missing = [n for n, p in params.items() if p.grad is None]
        assert not missing, f"LoRA parameters got no gradient: {missing[:3]}"
        return {n: p.grad for n, p in params.items()}

    expected = lora_gradients(original, {n: p for n, p in original.named_parameters() if "lora_" in n})
    actual = lora_gradients(model, lora)
    for name, grad in actual.items():
        assert_close_on_real(grad, expected[name], atol=1e-4)
    assert any(g.abs().max() > 0 for n, g in actual.items() if "lora_A" in n)
    assert any(g.abs().max() > 0 for n, g in actual.items() if "lora_B" in n)

"""Every attention implementation transformers offers: converted and exact, or refused at transform time."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("lengths", [None, OTHER_LENGTHS], ids=["padded", "other-padding"])
def test_eager_and_sdpa_models_convert_and_match_original(attn_implementation: str, lengths: tuple | None) -> None:
    model = build_bert(attn_implementation=attn_implementation)
    inputs = batch(model.config) if lengths is None else batch(model.config, lengths)
    expected = run(model, inputs)
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert converted_layers(converted)
    actual = run(converted, inputs)
    assert_close_on_real(actual.last_hidden_state, expected.last_hidden_state, inputs["attention_mask"])
    assert_close_on_real(actual.pooler_output, expected.pooler_output)


def test_flex_attention_model_is_refused_at_transform_time_naming_the_fix() -> None:
    model = build_bert(attn_implementation="flex_attention")
    inputs = batch(model.config)
    expected = run(model, inputs)
    before = snapshot(model)
    with pytest.raises(BetterTransformerError, match="flex_attention") as refusal:
        BetterTransformer.transform(model)
    message = str(refusal.value)
    assert "set_attn_implementation" in message and ("sdpa" in message or "eager" in message), message
    assert_unchanged(model, before, inputs, expected)


def test_flex_attention_set_on_the_config_is_refused_too() -> None:
    model = build_bert()
    model.config._attn_implementation = "flex_attention"
    before = snapshot(model)
    with pytest.raises(BetterTransformerError, match="flex_attention"):
        BetterTransformer.transform(model)
    assert_unchanged(model, before)


def test_flex_model_switched_to_sdpa_converts_and_matches() -> None:
    model = build_bert(attn_implementation="flex_attention")
    inputs = batch(model.config)
    expected = run(model, inputs)
    model.set_attn_implementation("sdpa")
    converted = BetterTransformer.transform(model)
    assert_close_on_real(run(converted, inputs).last_hidden_state, expected.last_hidden_state, inputs["attention_mask"])

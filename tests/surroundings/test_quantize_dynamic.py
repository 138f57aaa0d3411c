"""``torch.ao.quantization.quantize_dynamic``: converted and equal to the quantized original.

A dynamically quantized Linear quantizes its input with one scale for the whole input tensor (the
range over every token the layer is called with, padded ones included), so the converted model must
call it on exactly the tensor the original calls it on: skipping padded tokens changes the scale.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from bt_core import BetterTransformer

from .conftest import (
    OTHER_LENGTHS,
    UNPADDED,
    assert_close_on_real,
    assert_state_dict_identical,
    batch,
    build_bert,
    converted_layers,
    run,
    snapshot,
)


def quantized_bert(model_class: str = "BertModel") -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return torch.ao.quantization.quantize_dynamic(build_bert(model_class), {nn.Linear}, dtype=torch.qint8)


def test_quantization_changes_the_outputs() -> None:
    # Guards the tests below: they compare against a model that really is quantized.
    inputs = batch(build_bert().config)
    float_out = run(build_bert(), inputs).last_hidden_state
    quantized_out = run(quantized_bert(), inputs).last_hidden_state
    assert (float_out - quantized_out)[inputs["attention_mask"].bool()].abs().max() > 1e-3


@pytest.mark.parametrize("lengths", [None, OTHER_LENGTHS, UNPADDED], ids=["padded", "other-padding", "unpadded"])
def test_dynamically_quantized_model_converts_and_matches_quantized_original(lengths: tuple | None) -> None:
    model = quantized_bert()
    inputs = batch(model.config) if lengths is None else batch(model.config, lengths)
    expected = run(model, inputs)
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert converted_layers(converted)
    actual = run(converted, inputs)
    assert_close_on_real(actual.last_hidden_state, expected.last_hidden_state, inputs["attention_mask"])
    assert_close_on_real(actual.pooler_output, expected.pooler_output)


def test_quantized_sequence_classifier_logits_match_quantized_original() -> None:
    model = quantized_bert("BertForSequenceClassification")
    inputs = batch(model.config)
    expected = run(model, inputs).logits
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert_close_on_real(run(converted, inputs).logits, expected)


def test_reverse_gives_back_the_quantized_linears_bit_for_bit() -> None:
    model = quantized_bert()
    quantized_class = type(model.encoder.layer[0].attention.self.query)
    inputs = batch(model.config)
    expected = run(model, inputs).last_hidden_state
    before = snapshot(model)
    BetterTransformer.reverse(BetterTransformer.transform(model))
    assert type(model.encoder.layer[0].attention.self.query) is quantized_class
    assert_state_dict_identical(model, before)
    assert torch.equal(run(model, inputs).last_hidden_state, expected)

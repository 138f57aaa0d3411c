"""What the pack refuses, and that every refusal names the culprit and the fix."""

from __future__ import annotations

import pytest
import torch
from bt_plugins_encoders.adapters import BertLayerAdapter

from bt_core import BetterTransformer, UnsupportedModelError

from .conftest import CASES, Case, build, converted_layers

_BERT_SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 128,
}

REFUSED = {
    "deberta": (_BERT_SIZES, "disentangled attention"),
    "deberta-v2": (_BERT_SIZES, "disentangled attention"),
}


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_model_type_is_refused_with_its_reason(model_type: str) -> None:
    from transformers import AutoConfig, AutoModel

    sizes, reason = REFUSED[model_type]
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **sizes))
    expected = rf"model type '{model_type}' cannot be converted exactly: .*{reason}.*plugin 'encoders'"
    with pytest.raises(UnsupportedModelError, match=expected):
        BetterTransformer.transform(model)
    assert not converted_layers(model)


def _case(model_type: str) -> Case:
    return next(c for c in CASES if c.id == model_type)


BERT_LIKE_WITH_POSITION_FIELD = ["bert", "roberta", "electra", "xlm-roberta", "camembert", "ernie", "layoutlm"]


@pytest.mark.parametrize("value", ["relative_key", "relative_key_query"])
@pytest.mark.parametrize("model_type", BERT_LIKE_WITH_POSITION_FIELD)
def test_relative_position_attention_config_is_refused(model_type: str, value: str) -> None:
    model = build(_case(model_type), position_embedding_type=value)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=f"position_embedding_type='{value}'.*relative-position.*absolute"):
        BetterTransformer.transform(model)
    # Nothing was swapped: conversion validates every layer before touching the model.
    assert not converted_layers(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_absolute_position_embedding_config_is_converted() -> None:
    model = build(_case("bert"), position_embedding_type="absolute")
    assert converted_layers(BetterTransformer.transform(model))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "bert-generation", "xlm-roberta-xl", "rembert", "tapas"])
def test_decoder_config_is_refused(model_type: str) -> None:
    model = build(_case(model_type), is_decoder=True)
    with pytest.raises(UnsupportedModelError, match=r"is_decoder=True .*causal.*is_decoder=False"):
        BetterTransformer.transform(model)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
def test_cross_attention_config_is_refused(model_type: str) -> None:
    model = build(_case(model_type), is_decoder=True, add_cross_attention=True)
    with pytest.raises(UnsupportedModelError, match=r"add_cross_attention=True .*cross-attention"):
        BetterTransformer.transform(model)


def test_bert_generation_decoder_is_refused() -> None:
    from transformers import BertGenerationDecoder

    model = build(_case("bert-generation"), BertGenerationDecoder, is_decoder=True)
    with pytest.raises(UnsupportedModelError, match=r"BertGenerationLayer .*is_decoder=True"):
        BetterTransformer.transform(model)


def test_missing_weight_names_the_layer_and_every_path_tried() -> None:
    model = build(_case("bert"))
    del model.encoder.layer[1].attention.output.LayerNorm
    expected = (
        r"BertLayer: cannot find its first layer norm; tried 'attention\.output\.LayerNorm'"
        r".*upgrade bt-plugins-encoders"
    )
    with pytest.raises(UnsupportedModelError, match=expected):
        BetterTransformer.transform(model)
    assert not converted_layers(model)


def test_adapter_reads_a_bias_free_linear_as_zero_bias() -> None:
    model = build(_case("bert"))
    layer = model.encoder.layer[0]
    layer.attention.self.key.bias = None
    adapter = BertLayerAdapter(layer, model.config)
    hidden = model.config.hidden_size
    assert torch.equal(adapter.in_proj_bias[hidden : 2 * hidden], torch.zeros(hidden))
    adapter.validate_bettertransformer()


def test_callable_activation_is_refused_naming_the_field() -> None:
    model = build(_case("bert"))
    # transformers 5.x configs validate hidden_act as a string; older or hand-edited ones may not.
    object.__setattr__(model.config, "hidden_act", torch.nn.functional.gelu)
    expected = r"config\.hidden_act is <built-in function gelu>, a callable.*name"
    with pytest.raises(UnsupportedModelError, match=expected):
        BetterTransformer.transform(model)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "albert", "xlm-roberta-xl"])
def test_config_activation_that_the_layer_does_not_compute_is_refused(model_type: str) -> None:
    model = build(_case(model_type))
    field = "activation" if model_type == "distilbert" else "hidden_act"
    setattr(model.config, field, "relu")  # edited after the model was built: the layers still use gelu
    with pytest.raises(UnsupportedModelError, match=rf"config\.{field}='relu' \(ReLU\), but the layer computes .*GELU"):
        BetterTransformer.transform(model)
    assert not converted_layers(model)

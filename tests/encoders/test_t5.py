"""The T5 family's encoder half (t5, mt5, umt5): converted blocks compute the original's, the decoder is never touched.

Specifics over the shared suites: the relative position bias (the first block's, shared down the stack
in T5/mT5; every block's own in UMT5), attention wider than the model (4 heads x 16 over d_model 32),
relu and gated-gelu feed-forwards, seq2seq models (``generate`` gives the same tokens), and the
bucket embedding's gradient in training.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from bt_plugins_encoders.examples import example_config

from bt_core import BetterTransformer, BetterTransformerBaseLayer, force_strategy

ATOL = 1e-5
LENGTHS = (11, 6, 3)
STRATEGIES = (None, "packed", "dense", "reference")


def _config(model_type: str, **overrides: Any) -> Any:
    return example_config(model_type, **overrides)


def _encoder_class(model_type: str) -> type:
    import transformers

    return getattr(transformers, {"t5": "T5", "mt5": "MT5", "umt5": "UMT5"}[model_type] + "EncoderModel")


def _build(model_class: type, config: Any, seed: int = 0, attn_implementation: str | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    model = model_class(config).eval()
    with torch.no_grad():  # away from the initialisation's symmetries (zeroed biases, unit norms)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


#: (id, model_type, config overrides): relu T5, gated-gelu T5 (flan-t5), mT5, UMT5 (a bias in every block).
VARIANTS = [
    pytest.param("t5", {}, id="t5-relu"),
    pytest.param("t5", {"feed_forward_proj": "gated-gelu"}, id="t5-gated-gelu"),
    pytest.param("mt5", {}, id="mt5"),
    pytest.param("umt5", {}, id="umt5"),
]


def _batch(padding: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask`` of rows of ``LENGTHS`` tokens, padded on the ``padding`` side (or none)."""
    seq_len = max(LENGTHS)
    ids = torch.randint(2, 128, (len(LENGTHS), seq_len), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(len(LENGTHS), seq_len, dtype=torch.long)
    if padding != "none":
        for row, length in enumerate(LENGTHS):
            if padding == "right":
                mask[row, length:] = 0
            else:
                mask[row, : seq_len - length] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def _compared_positions(mask: torch.Tensor) -> torch.Tensor:
    """Real tokens, and position 0 of every row (heads read it, padded or not)."""
    keep = mask.bool().clone()
    keep[:, 0] = True
    return keep


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor, atol: float = ATOL) -> None:
    keep = _compared_positions(mask)
    diff = (actual[keep] - expected[keep]).abs().max().item()
    assert diff <= atol, f"max difference {diff:.3g} > {atol}"


def _converted(model: torch.nn.Module) -> list[BetterTransformerBaseLayer]:
    return [m for m in model.modules() if isinstance(m, BetterTransformerBaseLayer)]


# -- the encoder ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s or "auto")
@pytest.mark.parametrize("padding", ["right", "left", "none"])
@pytest.mark.parametrize(("model_type", "overrides"), VARIANTS)
def test_encoder_matches_original_on_real_tokens_and_position_zero(
    model_type: str, overrides: dict[str, Any], padding: str, strategy: str | None
) -> None:
    original = _build(_encoder_class(model_type), _config(model_type, **overrides))
    inputs = _batch(padding)
    with torch.inference_mode():
        expected = original(**inputs).last_hidden_state
    converted = BetterTransformer.transform(original, keep_original_model=True)
    assert len(_converted(converted)) == 2
    with torch.inference_mode(), force_strategy(strategy):
        actual = converted(**inputs).last_hidden_state
    _assert_close(actual, expected, inputs["attention_mask"])


@pytest.mark.parametrize(("model_type", "overrides"), VARIANTS)
def test_requested_attentions_and_hidden_states_match_original(model_type: str, overrides: dict[str, Any]) -> None:
    # eager: transformers' sdpa attention records no probabilities
    original = _build(_encoder_class(model_type), _config(model_type, **overrides), attn_implementation="eager")
    inputs = {**_batch("right"), "output_attentions": True, "output_hidden_states": True}
    with torch.inference_mode():
        expected = original(**inputs)
        actual = BetterTransformer.transform(original, keep_original_model=True)(**inputs)
    mask = inputs["attention_mask"]
    assert len(actual.hidden_states) == len(expected.hidden_states) == 3
    for got, want in zip(actual.hidden_states, expected.hidden_states, strict=True):
        _assert_close(got, want, mask)
    assert len(actual.attentions) == len(expected.attentions) == 2
    keys = mask.bool()[:, None, None, :]  # probabilities towards real keys, from real queries
    queries = mask.bool()[:, None, :, None]
    for got, want in zip(actual.attentions, expected.attentions, strict=True):
        assert ((got - want).abs() * (keys & queries)).max().item() <= ATOL


@pytest.mark.parametrize(("model_type", "overrides"), VARIANTS)
def test_train_mode_with_dropout_matches_original_and_gradients_including_the_relative_bias_embedding(
    model_type: str, overrides: dict[str, Any]
) -> None:
    """Same seed, same dropout masks: probabilities, both branches and the feed-forward's activations are
    dropped where T5 drops them (eager attention: transformers' sdpa draws its own dropout mask)."""
    config = _config(model_type, dropout_rate=0.2, **overrides)
    original = _build(_encoder_class(model_type), config, attn_implementation="eager").train()
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch("right")
    mask = inputs["attention_mask"]
    weights = torch.randn(32, generator=torch.Generator().manual_seed(3))
    outputs = []
    for model in (original, converted):
        torch.manual_seed(7)
        outputs.append(model(**inputs).last_hidden_state)
        ((outputs[-1] @ weights) * mask).sum().backward()
    _assert_close(outputs[1], outputs[0], mask)
    for layer, original_layer in zip(converted.encoder.block, original.encoder.block, strict=True):
        attention = original_layer.layer[0].SelfAttention
        q, k, v = (getattr(attention, n).weight.grad for n in ("q", "k", "v"))
        torch.testing.assert_close(layer.in_proj_weight.grad, torch.cat([q, k, v]), atol=ATOL, rtol=1e-4)
    reference = dict(original.named_parameters())
    for name, parameter in converted.named_parameters():  # shared: o, wi, wo, norms, embeddings, bias buckets
        if name in reference:
            torch.testing.assert_close(parameter.grad, reference[name].grad, atol=ATOL, rtol=1e-4, msg=name)
    buckets = [n for n, p in converted.named_parameters() if "relative_attention_bias" in n and p.grad is not None]
    assert len(buckets) == (2 if model_type == "umt5" else 1)


@pytest.mark.parametrize(("model_type", "overrides"), VARIANTS)
def test_reverse_gives_a_bit_identical_state_dict_and_conversion_adds_no_parameters(
    model_type: str, overrides: dict[str, Any]
) -> None:
    original = _build(_encoder_class(model_type), _config(model_type, **overrides))
    before = {k: v.clone() for k, v in original.state_dict().items()}
    count = sum(p.numel() for p in original.parameters())
    converted = BetterTransformer.transform(original)
    assert sum(p.numel() for p in converted.parameters()) == count
    restored = BetterTransformer.reverse(converted).state_dict()
    assert restored.keys() == before.keys()
    assert all(torch.equal(restored[k], before[k]) for k in before)


def test_token_classification_head_matches_original() -> None:
    from transformers import T5ForTokenClassification

    original = _build(T5ForTokenClassification, _config("t5", num_labels=3))
    for padding in ("right", "left"):
        inputs = _batch(padding)
        with torch.inference_mode():
            expected = original(**inputs).logits
            actual = BetterTransformer.transform(original, keep_original_model=True)(**inputs).logits
        _assert_close(actual, expected, inputs["attention_mask"])


# -- seq2seq models: the encoder converted, the decoder untouched -----------------------------------------------


def _seq2seq(
    model_class_name: str = "T5ForConditionalGeneration", model_type: str = "t5", **overrides: Any
) -> torch.nn.Module:
    import transformers

    config = _config(model_type, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, **overrides)
    return _build(getattr(transformers, model_class_name), config)


def _decoder_unchanged(model: torch.nn.Module, decoder_before: dict[str, torch.Tensor]) -> None:
    decoder = model.decoder if hasattr(model, "decoder") else model.transformer.decoder
    assert all(type(block).__name__.endswith("T5Block") for block in decoder.block)
    assert not _converted(decoder)
    after = decoder.state_dict()
    assert all(after[k].data_ptr() == v.data_ptr() for k, v in decoder_before.items())  # the same tensors


@pytest.mark.parametrize("num_beams", [1, 2], ids=["greedy", "beam-2"])
def test_generate_gives_identical_tokens_with_the_encoder_converted(num_beams: int) -> None:
    model = _seq2seq()
    inputs = _batch("right")
    settings = {"max_new_tokens": 8, "num_beams": num_beams, "do_sample": False, "min_new_tokens": 8}
    expected = model.generate(**inputs, **settings)
    decoder_before = dict(model.decoder.state_dict())
    BetterTransformer.transform(model)
    assert len(_converted(model)) == 2 and BetterTransformer.is_converted(model)
    _decoder_unchanged(model, decoder_before)
    assert torch.equal(model.generate(**inputs, **settings), expected)
    BetterTransformer.reverse(model)
    assert not BetterTransformer.is_converted(model)
    assert all(torch.equal(model.decoder.state_dict()[k], v) for k, v in decoder_before.items())


def test_sequence_classification_head_of_the_seq2seq_model_matches_original() -> None:
    model = _seq2seq("T5ForSequenceClassification", num_labels=3)
    inputs = _batch("right")
    for row, length in enumerate(LENGTHS):  # the head reads the decoder at each row's one eos token
        inputs["input_ids"][row, length - 1] = 1
    with torch.inference_mode():
        expected = model(**inputs).logits
    BetterTransformer.transform(model)
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs).logits, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("model_type", ["t5", "mt5", "umt5"])
def test_whole_seq2seq_model_converts_its_encoder_and_leaves_the_decoder_alone(model_type: str) -> None:
    model = _seq2seq(f"{ {'t5': 'T5', 'mt5': 'MT5', 'umt5': 'UMT5'}[model_type] }ForConditionalGeneration", model_type)
    inputs = _batch("left")
    settings = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    expected = model.generate(**inputs, **settings)
    decoder_before = dict(model.decoder.state_dict())
    BetterTransformer.transform(model)
    assert len(_converted(model)) == 2 and not _converted(model.decoder)
    _decoder_unchanged(model, decoder_before)
    assert torch.equal(model.generate(**inputs, **settings), expected)


def test_adapter_declines_decoder_blocks_and_accepts_encoder_blocks() -> None:
    from bt_plugins_encoders.t5 import T5BlockAdapter

    model = _seq2seq()
    assert all(T5BlockAdapter.converts(block, model.config) for block in model.encoder.block)
    assert not any(T5BlockAdapter.converts(block, model.config) for block in model.decoder.block)

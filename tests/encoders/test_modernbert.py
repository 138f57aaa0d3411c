"""ModernBERT: converted layers compute ModernBertEncoderLayer exactly.

The example config has two layers: layer 0 global (full attention, identity attention norm, rotary base
160000) and layer 1 local (a window of ``local_attention // 2 = 4`` positions, rotary base 10000), GeGLU
feed-forwards and no biases. Batches of 11 tokens cross the window.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch
from bt_plugins_encoders.modernbert import ModernBertLayerAdapter, padding_of_sliding_mask

import bt_core
from bt_core import BetterTransformer, UnsupportedModelError

from .conftest import ATOL, Case, assert_close_on_valid, build, converted_layers

CASE = Case("modernbert", "modernbert", {"local_attention": 8}, fused=False)
SEQ_LEN = 11
#: Row lengths: the second row is padded by 4 tokens, as far as the window reaches, so on a left-padded
#: batch every position (position 0 too) has a real token within the window of the local layer.
LENGTHS = (11, 7, 9)
#: A row padded by 9: on the left, position 0's window holds only padding (see the test using it).
LONG_PADDING = (11, 2, 9)
IMPLEMENTATIONS = ("sdpa", "eager")
STRATEGIES = (None, "packed", "dense", "reference")
PADDINGS = ("right", "left", "none")


def batch(config: Any, padding: str, lengths: tuple[int, ...] = LENGTHS, *, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, int(config.vocab_size), (len(lengths), SEQ_LEN), generator=generator)
    mask = torch.ones(len(lengths), SEQ_LEN, dtype=torch.long)
    for row, length in enumerate(lengths if padding != "none" else ()):
        real = slice(SEQ_LEN - length, None) if padding == "left" else slice(0, length)
        mask[row] = 0
        mask[row, real] = 1
    return {"input_ids": ids.masked_fill(mask == 0, int(config.pad_token_id)), "attention_mask": mask}


def strategy(name: str | None) -> Any:
    return contextlib.nullcontext() if name is None else bt_core.force_strategy(name)


def position_zero_too(mask: torch.Tensor) -> torch.Tensor:
    """Real tokens and position 0, which heads read (padding in a left-padded row)."""
    keep = mask.bool().clone()
    keep[:, 0] = True
    return keep


def test_layers_declare_the_original_parts() -> None:
    model = build(CASE)
    converted = BetterTransformer.transform(copy.deepcopy(model))
    first, second = (layer for _, layer in converted_layers(converted))
    assert isinstance(first, ModernBertLayerAdapter)
    assert (first.attention_type, first.attention_window) == ("full_attention", None)
    assert (second.attention_type, second.attention_window) == ("sliding_attention", model.config.local_attention // 2)
    assert first.norm1_kind == "none" and second.norm1_kind == "layer"  # layer 0's attn_norm is nn.Identity
    for layer in (first, second):
        assert (layer.rotary, layer.gated_half, layer.norm_first, layer.activation) == ("half", "first", True, "gelu")
        assert all(getattr(layer, name) is None for name in ("in_proj_bias", "out_proj_bias", "linear1_bias"))
        assert layer.norm2_bias is None and layer.linear2_bias is None


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_local_layers_mask_is_padding_within_the_declared_window(implementation: str) -> None:
    """What transformers hands a sliding layer is ``padding(key) & |query - key| <= local_attention // 2``:
    the window the adapter declares, and the padding it passes on."""
    model = build(CASE, attn_implementation=implementation)
    seen: list[torch.Tensor] = []
    layer = model.layers[1]
    handle = layer.register_forward_pre_hook(lambda m, a, k: seen.append(k["attention_mask"]), with_kwargs=True)
    inputs = batch(model.config, "left")
    with torch.inference_mode():
        model(**inputs)
    handle.remove()
    (mask,) = seen
    padding = padding_of_sliding_mask(mask, model.config.local_attention // 2)
    assert padding is not None and torch.equal(padding, inputs["attention_mask"].bool())
    with pytest.raises(ValueError):  # one position more would be a different window
        padding_of_sliding_mask(mask, model.config.local_attention // 2 + 1)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("forced", STRATEGIES, ids=lambda s: s or "default")
def test_batch_matches_original_on_real_tokens_and_position_zero(
    implementation: str, padding: str, forced: str | None
) -> None:
    original = build(CASE, attn_implementation=implementation)
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, padding)
    with torch.inference_mode():
        expected = original(**inputs).last_hidden_state
        with strategy(forced):
            actual = converted(**inputs).last_hidden_state
    assert_close_on_valid(actual, expected, position_zero_too(inputs["attention_mask"]))


@pytest.mark.parametrize("forced", (None, "packed", "dense"), ids=lambda s: s or "default")
def test_long_left_padding_matches_sdpa_original_at_position_zero(forced: str | None) -> None:
    """Position 0 of a row left-padded beyond the window attends to no key in the local layer: transformers'
    SDPA attention gives it a zero context there, and so do bt's SDPA strategies."""
    original = build(CASE, attn_implementation="sdpa")
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, "left", LONG_PADDING)
    with torch.inference_mode():
        expected = original(**inputs).last_hidden_state
        with strategy(forced):
            actual = converted(**inputs).last_hidden_state
    assert_close_on_valid(actual, expected, position_zero_too(inputs["attention_mask"]))


@pytest.mark.parametrize("forced", STRATEGIES, ids=lambda s: s or "default")
def test_per_row_position_ids_rotate_each_row_by_its_own_positions(forced: str | None) -> None:
    """With ``position_ids`` counting from each row's first real token, cos/sin differ per row."""
    original = build(CASE)
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, "left")
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        expected = original(**inputs).last_hidden_state
        with strategy(forced):
            actual = converted(**inputs).last_hidden_state
    assert_close_on_valid(actual, expected, position_zero_too(inputs["attention_mask"]))


@pytest.mark.parametrize(
    "config",
    [
        {"attention_bias": True, "mlp_bias": True, "norm_bias": True},
        # Local first: layer 0 has both the identity norm and the window. (transformers 5.10 cannot build a
        # config without local layers.)
        {"hidden_activation": "gelu_pytorch_tanh", "layer_types": ["sliding_attention", "full_attention"]},
        {"num_hidden_layers": 4, "local_attention": 4, "global_rope_theta": 500.0, "local_rope_theta": 20.0},
    ],
    ids=["biases", "local-first-tanh-gelu", "four-layers-window-2"],
)
@pytest.mark.parametrize("padding", ("right", "left"))
def test_config_variants_match_original(config: dict[str, Any], padding: str) -> None:
    original = build(CASE, **config)
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, padding)
    with torch.inference_mode():
        expected = original(**inputs).last_hidden_state
        actual = converted(**inputs).last_hidden_state
    assert_close_on_valid(actual, expected, position_zero_too(inputs["attention_mask"]))


#: (task head, the sequence classifier's pooling): it pools position 0 ("cls"; padding in a left-padded
#: row) or the real tokens' mean.
HEADS = [
    ("AutoModelForSequenceClassification", "cls"),
    ("AutoModelForSequenceClassification", "mean"),
    ("AutoModelForTokenClassification", "cls"),
    ("AutoModelForMaskedLM", "cls"),
]


@pytest.mark.parametrize("padding", ("right", "left"))
@pytest.mark.parametrize(("head", "pooling"), HEADS, ids=[f"{h.removeprefix('AutoModelFor')}-{p}" for h, p in HEADS])
def test_task_heads_match_original(head: str, pooling: str, padding: str) -> None:
    import transformers

    original = build(CASE, getattr(transformers, head), num_labels=3, classifier_pooling=pooling)
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, padding, LONG_PADDING)
    with torch.inference_mode():
        expected = original(**inputs).logits
        actual = converted(**inputs).logits
    if expected.dim() == 2:  # (batch, labels)
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    else:
        assert_close_on_valid(actual, expected, inputs["attention_mask"])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_train_mode_matches_original_outputs_and_gradients(implementation: str) -> None:
    original = build(CASE, attn_implementation=implementation, num_labels=3).train()
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, "right")
    mask = inputs["attention_mask"]
    weights = torch.randn(original.config.hidden_size, generator=torch.Generator().manual_seed(3))
    outputs = []
    for model in (original, converted):
        hidden = model(**inputs).last_hidden_state
        ((hidden @ weights) * mask).sum().backward()
        outputs.append(hidden.detach())
    assert_close_on_valid(outputs[1], outputs[0], mask)
    # Converted layers share the original's parameters: reversed, every one carries its gradient.
    reversed_model = BetterTransformer.reverse(converted)
    expected = dict(original.named_parameters())
    for name, parameter in reversed_model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        torch.testing.assert_close(parameter.grad, expected[name].grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
    ],
    ids=str,
)
def test_train_mode_gradients_are_finite_when_a_padded_query_has_no_key_in_its_window(dtype: torch.dtype) -> None:
    original = build(CASE).to(dtype).train()
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, "right", LONG_PADDING)
    for model in (original, converted):
        (model(**inputs).last_hidden_state * inputs["attention_mask"][..., None]).sum().backward()
    for name, parameter in BetterTransformer.reverse(converted).named_parameters():
        assert parameter.grad is None or bool(torch.isfinite(parameter.grad).all()), name


def test_dropout_inside_the_feed_forward_is_placed_where_the_original_places_it() -> None:
    """mlp_dropout drops act(input) * gate before Wo: at p=1 the whole feed-forward is zero in both models
    (deterministic, so the two can be compared), and inference ignores it."""
    original = build(CASE, mlp_dropout=1.0)
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, "right")
    with torch.inference_mode():
        assert_close_on_valid(
            converted(**inputs).last_hidden_state, original(**inputs).last_hidden_state, inputs["attention_mask"]
        )
    assert all(layer.feed_forward_inner_dropout == 1.0 for _, layer in converted_layers(converted))
    assert_close_on_valid(
        converted.train()(**inputs).last_hidden_state,
        original.train()(**inputs).last_hidden_state,
        inputs["attention_mask"],
    )


def test_attention_dropout_is_placed_on_probabilities_and_on_the_output_projection() -> None:
    converted = BetterTransformer.transform(build(CASE, attention_dropout=0.2))
    for _, layer in converted_layers(converted):
        assert (layer.attention_dropout, layer.branch_dropout("attention"), layer.branch_dropout("feed_forward")) == (
            0.2,
            0.2,
            0.0,
        )


def test_a_prepared_mask_without_the_window_is_refused_with_the_fix() -> None:
    """transformers passes a prepared 4-D mask to every layer unchanged, so its sliding layers attend beyond
    their window under sdpa; the converted layer says so instead of applying the window."""
    original = build(CASE)
    converted = BetterTransformer.transform(copy.deepcopy(original))
    inputs = batch(original.config, "right")
    prepared = inputs["attention_mask"].bool()[:, None, None, :].expand(-1, 1, SEQ_LEN, -1)
    with torch.inference_mode(), pytest.raises(UnsupportedModelError, match=r"not key padding within that window.*2-D"):
        converted(input_ids=inputs["input_ids"], attention_mask=prepared)


def test_reverse_is_bit_identical_and_conversion_adds_no_parameters() -> None:
    model = build(CASE)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    count = sum(p.numel() for p in model.parameters())
    converted = BetterTransformer.transform(model)
    assert sum(p.numel() for p in converted.parameters()) == count
    restored = BetterTransformer.reverse(converted)
    after = restored.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())

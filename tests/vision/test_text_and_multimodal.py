"""Towers that see text: CLIP's causal text encoder, SigLIP's padded text, ViLT's joint sequence whose
padding sits in the middle. Outputs equal the original's on every token the model reads."""

from __future__ import annotations

from typing import Any

import bt_plugins_vision.plugin as vision_plugin
import pytest
import torch

from bt_core import BetterTransformer, BetterTransformerError, force_strategy

from .conftest import assert_close, build, clone_state, convert, converted_layers, run, state_dicts_identical

ATTENTION = ["sdpa", "eager"]


def _clip_text(attn: str, **overrides: Any) -> torch.nn.Module:
    return build(vision_plugin.clip_text_config, "CLIPTextModel", _attn_implementation=attn, **overrides)


# -- CLIP: the text tower is causal ------------------------------------------------------------------


@pytest.mark.parametrize("attn", ATTENTION)
def test_clip_text_padded_batch_matches_original_on_valid_tokens(attn: str) -> None:
    model = _clip_text(attn)
    inputs = vision_plugin.padded_text(3)
    keep = inputs["attention_mask"].bool()
    assert not keep.all()
    expected = run(model, inputs)

    convert(model)
    actual = run(model, inputs)

    assert_close(actual.last_hidden_state, expected.last_hidden_state, keep)
    assert_close(actual.pooler_output, expected.pooler_output)


@pytest.mark.parametrize("attn", ATTENTION)
def test_clip_text_without_mask_stays_causal(attn: str) -> None:
    """With no padding transformers may pass no mask at all and ``is_causal=True``: the converted
    layer must still attend causally, not to the whole sequence."""
    model = _clip_text(attn)
    inputs = {"input_ids": vision_plugin.padded_text(3)["input_ids"][:, :6]}
    expected = run(model, inputs)
    convert(model)
    assert_close(run(model, inputs).last_hidden_state, expected.last_hidden_state)

    # A later token must not change an earlier one's output.
    changed = inputs["input_ids"].clone()
    changed[:, -1] = 3
    assert_close(run(model, {"input_ids": changed}).last_hidden_state[:, :-1], expected.last_hidden_state[:, :-1])


@pytest.mark.parametrize("strategy", ["packed", "dense", "reference"])
def test_clip_text_forced_strategies_keep_the_causal_mask(strategy: str) -> None:
    model = _clip_text("sdpa")
    inputs = vision_plugin.padded_text(3)
    keep = inputs["attention_mask"].bool()
    expected = run(model, inputs).last_hidden_state
    convert(model)
    with force_strategy(strategy):
        try:
            actual = run(model, inputs).last_hidden_state
        except BetterTransformerError as exc:  # refusing is fine; treating causal as padding is not
            assert strategy == "packed" and "more than key padding" in str(exc)
            return
    assert_close(actual, expected, keep)


@pytest.mark.parametrize("attn", ATTENTION)
def test_clip_text_causal_mask_is_never_taken_for_padding_by_the_fused_kernel(attn: str) -> None:
    model = _clip_text(attn, hidden_act="gelu")  # an activation the kernel computes, to reach the mask check
    inputs = vision_plugin.padded_text(3)
    convert(model)
    with force_strategy("fused"), pytest.raises(BetterTransformerError, match="more than key padding"):
        run(model, inputs)


def test_clip_model_features_and_logits_match_original() -> None:
    model = build(vision_plugin.clip_config, "CLIPModel")
    config = model.config
    inputs = vision_plugin.text_and_image_inputs(config, 3)
    text = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    pixels = {"pixel_values": inputs["pixel_values"]}
    before = clone_state(model)
    expected = run(model, inputs)
    expected_image = run(model, pixels, model.get_image_features).pooler_output
    expected_text = run(model, text, model.get_text_features).pooler_output

    convert(model)
    assert len(converted_layers(model)) == config.text_config.num_hidden_layers + config.vision_config.num_hidden_layers
    actual = run(model, inputs)
    for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert_close(getattr(actual, name), getattr(expected, name))
    assert_close(run(model, pixels, model.get_image_features).pooler_output, expected_image)
    assert_close(run(model, text, model.get_text_features).pooler_output, expected_text)

    BetterTransformer.reverse(model)
    state_dicts_identical(before, model.state_dict())


def test_clip_layers_declare_quick_gelu_and_take_ordinary_ops() -> None:
    model = convert(build(vision_plugin.clip_config, "CLIPModel"))
    for layer in converted_layers(model):
        assert layer.activation == "quick_gelu"
        assert not layer.kernel_computes_activation


# -- SigLIP: padded text whose pooler reads the last (padding) position ------------------------------


@pytest.mark.parametrize("attn", ATTENTION)
def test_siglip_text_padded_batch_matches_original_everywhere_the_pooler_reads(attn: str) -> None:
    model = build(vision_plugin.siglip_text_config, "SiglipTextModel", _attn_implementation=attn)
    inputs = vision_plugin.padded_text(3)
    assert not inputs["attention_mask"][:, -1].all()  # the pooled last position is padding in some rows
    expected = run(model, inputs)

    convert(model)
    actual = run(model, inputs)

    assert_close(actual.pooler_output, expected.pooler_output)
    assert_close(actual.last_hidden_state, expected.last_hidden_state)
    for layer in converted_layers(model):
        assert layer.activation == "gelu_pytorch_tanh"


def test_siglip_model_logits_match_original() -> None:
    model = build(vision_plugin.siglip_config, "SiglipModel")
    inputs = vision_plugin.text_and_image_inputs(model.config, 3)
    expected = run(model, inputs)
    convert(model)
    actual = run(model, inputs)
    for name in ("logits_per_image", "text_embeds", "image_embeds"):
        assert_close(getattr(actual, name), getattr(expected, name))


# -- ViLT: text padding in the middle of the joint sequence --------------------------------------------


def _vilt_inputs(model: torch.nn.Module, pixels: bool) -> tuple[dict[str, Any], torch.Tensor]:
    config = model.config
    inputs = vision_plugin.vilt_inputs(config, 3)
    if pixels:  # ViLT samples patches at random: run() seeds both runs alike
        inputs.pop("image_embeds")
        inputs.pop("pixel_mask")
        inputs["pixel_values"] = vision_plugin.pixels(config, 3)
    num_patches = (config.image_size // config.patch_size) ** 2
    image_keep = torch.ones(3, num_patches + (1 if pixels else 0), dtype=torch.bool)
    keep = torch.cat([inputs["attention_mask"].bool(), image_keep], dim=1)
    return inputs, keep


@pytest.mark.parametrize("pixels", [True, False], ids=["pixel_values", "image_embeds"])
def test_vilt_padded_text_matches_original_on_valid_tokens(pixels: bool) -> None:
    model = build(vision_plugin.vilt_config, "ViltModel")
    inputs, keep = _vilt_inputs(model, pixels)
    assert not keep.all() and keep[:, -1].all()  # padding in the middle, real image tokens after it
    expected = run(model, inputs)

    convert(model)
    actual = run(model, inputs)

    assert_close(actual.last_hidden_state, expected.last_hidden_state, keep)
    assert_close(actual.pooler_output, expected.pooler_output)


def test_vilt_padded_text_and_images_of_different_sizes_match_on_valid_tokens() -> None:
    """Smaller images pad the image tokens too: padding in the middle and at the end of each row."""
    model = build(vision_plugin.vilt_config, "ViltModel")
    config = model.config
    inputs = vision_plugin.padded_text(3, seq_len=8)
    inputs["pixel_values"] = vision_plugin.pixels(config, 3)
    pixel_mask = torch.ones(3, config.image_size, config.image_size, dtype=torch.long)
    pixel_mask[1, :, config.image_size // 2 :] = 0
    pixel_mask[2, config.image_size // 2 :, :] = 0
    inputs["pixel_mask"] = pixel_mask
    with torch.inference_mode():
        torch.manual_seed(0)  # the same patch sampling as run() below
        _, keep = model.embeddings(
            inputs["input_ids"], inputs["attention_mask"], None, inputs["pixel_values"], pixel_mask, None, None
        )
    keep = keep.bool()
    assert not keep[1:, -1].any()  # image padding at the end of the rows with smaller images
    expected = run(model, inputs)

    convert(model)
    actual = run(model, inputs)

    assert_close(actual.last_hidden_state, expected.last_hidden_state, keep)
    assert_close(actual.pooler_output, expected.pooler_output)


@pytest.mark.parametrize("strategy", ["packed", "dense", "reference"])
def test_vilt_forced_strategies_match_original_on_valid_tokens(strategy: str) -> None:
    model = build(vision_plugin.vilt_config, "ViltModel")
    inputs, keep = _vilt_inputs(model, pixels=False)
    expected = run(model, inputs).last_hidden_state
    convert(model)
    with force_strategy(strategy):
        assert_close(run(model, inputs).last_hidden_state, expected, keep)


@pytest.mark.parametrize("strategy", [None, "packed"])
def test_vilt_hidden_states_recorded_by_its_encoder_are_padded_and_match_on_valid_tokens(strategy: str | None) -> None:
    """ViltEncoder collects hidden states between layers itself: none may be a packed token matrix."""
    model = build(vision_plugin.vilt_config, "ViltModel")
    inputs, keep = _vilt_inputs(model, pixels=False)
    inputs["output_hidden_states"] = True
    expected = run(model, inputs).hidden_states
    convert(model)
    with force_strategy(strategy):
        actual = run(model, inputs).hidden_states
    assert len(actual) == len(expected) == model.config.num_hidden_layers + 1
    for a, e in zip(actual, expected, strict=True):
        assert_close(a, e, keep)


def test_vilt_mid_sequence_padding_cannot_be_forced_onto_the_nested_kernel() -> None:
    model = convert(build(vision_plugin.vilt_config, "ViltModel"))
    inputs, _ = _vilt_inputs(model, pixels=False)
    with force_strategy("fused"), pytest.raises(BetterTransformerError, match="not on the right"):
        run(model, inputs)


def test_vilt_attentions_and_question_answering_logits_match_original() -> None:
    model = build(vision_plugin.vilt_config, "ViltForQuestionAnswering")
    inputs, _ = _vilt_inputs(model, pixels=False)
    inputs["output_attentions"] = True
    before = clone_state(model)
    expected = run(model, inputs)
    convert(model)
    actual = run(model, inputs)
    assert_close(actual.logits, expected.logits)
    assert len(actual.attentions) == len(expected.attentions) == model.config.num_hidden_layers
    for a, e in zip(actual.attentions, expected.attentions, strict=True):
        assert_close(a, e)
    BetterTransformer.reverse(model)
    state_dicts_identical(before, model.state_dict())


@pytest.mark.parametrize(
    "mask",
    [None, torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), torch.tensor([[0.0, 0.0, 0.0, -1e9], [0.0, 0.0, -1e9, -1e9]])],
    ids=["none", "keep", "additive"],
)
def test_clip_layer_reads_is_causal_as_a_causal_mask_combined_with_padding(mask: torch.Tensor | None) -> None:
    from bt_plugins_vision.adapters import ClipLayerAdapter

    model = build(vision_plugin.clip_text_config, "CLIPTextModel")
    layer = ClipLayerAdapter(model.encoder.layers[0], model.config)
    hidden = torch.zeros(2, 4, model.config.hidden_size)
    call = layer.parse_call(hidden, (mask,), {"is_causal": True})
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    expected = causal.expand(2, 1, 4, 4)
    if mask is not None:
        keep = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
        expected = expected & keep[:, None, None, :]
    assert torch.equal(call.attention_mask.expand(2, 1, 4, 4), expected)

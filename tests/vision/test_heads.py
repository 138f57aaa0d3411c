"""Task-head models: every head output of the converted model equals the original's, and the
model reverses to a bit-identical ``state_dict``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bt_plugins_vision.plugin as vision_plugin
import pytest
import torch

from bt_core import BetterTransformer

from .conftest import (
    assert_close,
    build,
    clone_state,
    convert,
    converted_layers,
    pixel_inputs,
    run,
    state_dicts_identical,
)


@dataclass(frozen=True)
class Head:
    model: str
    config: Callable[[], Any]
    outputs: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...] = ()


HEADS = [
    Head("ViTForImageClassification", vision_plugin.vit_config, ("logits",)),
    Head("ViTForMaskedImageModeling", vision_plugin.vit_config, ("reconstruction",), (("encoder_stride", 8),)),
    Head(
        "DeiTForImageClassificationWithTeacher",
        vision_plugin.deit_config,
        ("logits", "cls_logits", "distillation_logits"),
    ),
    Head("ViTMSNForImageClassification", vision_plugin.vit_msn_config, ("logits",)),
    Head("ViTMAEForPreTraining", vision_plugin.vit_mae_config, ("logits", "mask", "ids_restore")),
    Head("YolosForObjectDetection", vision_plugin.yolos_config, ("logits", "pred_boxes")),
    Head("Dinov2ForImageClassification", vision_plugin.dinov2_config, ("logits",)),
    Head("Dinov2Backbone", vision_plugin.dinov2_config, ("feature_maps",), (("out_features", ["stage1", "stage2"]),)),
    Head("BeitForImageClassification", vision_plugin.beit_config, ("logits",)),
    Head("BeitForMaskedImageModeling", vision_plugin.beit_config, ("logits",), (("use_mask_token", True),)),
    Head("Data2VecVisionForImageClassification", vision_plugin.data2vec_vision_config, ("logits",)),
    Head("CLIPVisionModelWithProjection", vision_plugin.clip_vision_config, ("image_embeds", "last_hidden_state")),
    Head("CLIPForImageClassification", vision_plugin.clip_config, ("logits",)),
    Head("SiglipForImageClassification", vision_plugin.siglip_config, ("logits",)),
]


def _compare(actual: Any, expected: Any) -> None:
    if isinstance(expected, torch.Tensor):
        assert_close(actual, expected)
    else:
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _compare(a, e)


@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.model)
def test_converted_head_outputs_match_original(head: Head) -> None:
    model = build(head.config, head.model, **dict(head.overrides))
    config = model.config.vision_config if hasattr(model.config, "vision_config") else model.config
    inputs = (
        pixel_inputs(model)
        if not hasattr(model.config, "vision_config")
        else {"pixel_values": vision_plugin.pixels(config, 3)}
    )
    if head.model in ("ViTForMaskedImageModeling", "BeitForMaskedImageModeling"):
        num_patches = (config.image_size // config.patch_size) ** 2
        inputs["bool_masked_pos"] = torch.rand(3, num_patches, generator=torch.Generator().manual_seed(5)) > 0.5
    before = clone_state(model)
    expected = run(model, inputs)

    convert(model)
    actual = run(model, inputs)
    for name in head.outputs:
        _compare(getattr(actual, name), getattr(expected, name))

    BetterTransformer.reverse(model)
    state_dicts_identical(before, model.state_dict())


def test_vit_mae_pretraining_converts_encoder_and_decoder_with_their_own_sizes() -> None:
    """The decoder's layers are ViTMAELayers of another width and head count than the encoder's."""
    model = build(
        vision_plugin.vit_mae_config,
        "ViTMAEForPreTraining",
        decoder_hidden_size=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=24,
    )
    inputs = pixel_inputs(model)
    expected = run(model, inputs)
    convert(model)
    layers = converted_layers(model)
    assert sorted((layer.embed_dim, layer.num_heads) for layer in layers) == [(16, 2), (16, 2), (32, 4), (32, 4)]
    actual = run(model, inputs)
    assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_dinov2_layer_scale_is_folded_and_reverse_gives_it_back() -> None:
    model = build(vision_plugin.dinov2_config, "Dinov2Model")
    lambdas = [layer.layer_scale1.lambda1.detach().clone() for layer in model.encoder.layer]
    assert not torch.allclose(lambdas[0], torch.ones_like(lambdas[0]))
    convert(model)
    for layer in converted_layers(model):
        original = layer.original_layer
        o_proj = next(m for n, m in original.named_modules() if n in ("attention.o_proj", "attention.output.dense"))
        expected = original.layer_scale1.lambda1[:, None] * o_proj.weight
        torch.testing.assert_close(layer.out_proj_weight.detach(), expected.detach())
    BetterTransformer.reverse(model)
    for layer, before in zip(model.encoder.layer, lambdas, strict=True):
        assert torch.equal(layer.layer_scale1.lambda1, before)

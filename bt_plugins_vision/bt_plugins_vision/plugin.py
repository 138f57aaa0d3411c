"""Entry point of bt-plugins-vision: the ViT family. Light: adapters load on first conversion.

Nothing here imports torch or transformers at module level: adapters are ``"module:Class"`` strings,
and the example configs/inputs (for ``bt_core.testing``) import what they need when called.
"""

from __future__ import annotations

from typing import Any

from bt_core import LayerMapping, hookimpl

_ADAPTERS = "bt_plugins_vision.adapters"

#: Tiny sizes shared by every example config: hidden 32, 4 heads, 2 layers, 32x32 images, 8x8 patches.
_TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
_TINY_IMAGE: dict[str, Any] = {**_TINY, "image_size": 32, "patch_size": 8, "num_channels": 3}
_TINY_TEXT: dict[str, Any] = {
    **_TINY,
    "vocab_size": 99,
    "max_position_embeddings": 16,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
}


def _config(name: str, **kwargs: Any) -> Any:
    import transformers

    return getattr(transformers, name)(**kwargs)


# -- example configs (zero-argument callables) --------------------------------------------------------


def vit_config() -> Any:
    return _config("ViTConfig", **_TINY_IMAGE)


def deit_config() -> Any:
    return _config("DeiTConfig", **_TINY_IMAGE)


def vit_mae_config() -> Any:
    return _config(
        "ViTMAEConfig",
        **_TINY_IMAGE,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
        mask_ratio=0.5,
    )


def vit_msn_config() -> Any:
    return _config("ViTMSNConfig", **_TINY_IMAGE)


def yolos_config() -> Any:
    tiny = {**_TINY_IMAGE, "image_size": [32, 32]}
    return _config("YolosConfig", **tiny, num_detection_tokens=4, num_labels=3)


def dinov2_config() -> Any:
    tiny = {k: v for k, v in _TINY_IMAGE.items() if k != "intermediate_size"}
    return _config("Dinov2Config", **tiny, mlp_ratio=2, layerscale_value=0.5)


def _beit_like(name: str) -> Any:
    return _config(
        name,
        **_TINY_IMAGE,
        vocab_size=64,
        use_relative_position_bias=False,
        use_shared_relative_position_bias=False,
        layer_scale_init_value=0.1,
        drop_path_rate=0.0,
    )


def beit_config() -> Any:
    return _beit_like("BeitConfig")


def data2vec_vision_config() -> Any:
    return _beit_like("Data2VecVisionConfig")


def vilt_config() -> Any:
    return _config("ViltConfig", **_TINY_IMAGE, vocab_size=99, max_position_embeddings=16)


def clip_text_config() -> Any:
    return _config("CLIPTextConfig", **_TINY_TEXT, projection_dim=16)


def clip_vision_config() -> Any:
    return _config("CLIPVisionConfig", **_TINY_IMAGE, projection_dim=16)


def clip_config() -> Any:
    import transformers

    return transformers.CLIPConfig(
        text_config=clip_text_config().to_dict(), vision_config=clip_vision_config().to_dict(), projection_dim=16
    )


def siglip_text_config() -> Any:
    return _config("SiglipTextConfig", **_TINY_TEXT, projection_size=32)


def siglip_vision_config() -> Any:
    return _config("SiglipVisionConfig", **_TINY_IMAGE)


def siglip_config() -> Any:
    import transformers

    return transformers.SiglipConfig(
        text_config=siglip_text_config().to_dict(), vision_config=siglip_vision_config().to_dict()
    )


# -- example inputs ------------------------------------------------------------------------------------


def padded_text(batch: int, seq_len: int = 12, vocab_size: int = 99, eos_token_id: int = 2) -> dict[str, Any]:
    """Right-padded ``input_ids``/``attention_mask``: row i keeps ``seq_len - 3*i`` tokens (at least 2),
    the last real one ``eos_token_id`` (CLIP pools there), pads are token 1. Deterministic."""
    import torch

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab_size, (batch, seq_len), generator=generator)
    attention_mask = torch.zeros(batch, seq_len, dtype=torch.long)
    for row in range(batch):
        length = max(seq_len - 3 * row, 2)
        attention_mask[row, :length] = 1
        input_ids[row, length - 1] = eos_token_id
        input_ids[row, length:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pixels(config: Any, batch: int) -> Any:
    import torch

    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, config.num_channels, height, width, generator=generator)


def text_inputs(config: Any, batch: int) -> dict[str, Any]:
    return padded_text(batch, vocab_size=config.vocab_size, eos_token_id=config.eos_token_id)


def text_and_image_inputs(config: Any, batch: int) -> dict[str, Any]:
    inputs = padded_text(batch, vocab_size=config.text_config.vocab_size, eos_token_id=config.text_config.eos_token_id)
    inputs["pixel_values"] = pixels(config.vision_config, batch)
    return inputs


def vilt_inputs(config: Any, batch: int) -> dict[str, Any]:
    """Padded text plus ``image_embeds`` (ViLT samples patches at random from ``pixel_values``; given
    embeddings it samples nothing, so two runs see the same sequence). Text padding sits in the middle
    of the joint sequence, before the image tokens."""
    import torch

    inputs = padded_text(batch, seq_len=8, vocab_size=config.vocab_size)
    num_patches = (config.image_size // config.patch_size) ** 2
    generator = torch.Generator().manual_seed(2)
    inputs["image_embeds"] = torch.randn(batch, num_patches, config.hidden_size, generator=generator)
    inputs["pixel_mask"] = torch.ones(batch, num_patches, dtype=torch.long)
    return inputs


# -- hooks ---------------------------------------------------------------------------------------------


@hookimpl
def bt_plugin_api_version() -> str:
    return "1.1"


@hookimpl
def bt_register_layers() -> list[LayerMapping]:
    vit = f"{_ADAPTERS}:ViTLayerAdapter"
    clip = f"{_ADAPTERS}:ClipLayerAdapter"
    siglip = f"{_ADAPTERS}:SiglipLayerAdapter"
    return [
        LayerMapping("vit", "ViTLayer", vit, vit_config),
        LayerMapping("deit", "DeiTLayer", vit, deit_config),
        LayerMapping("vit_mae", "ViTMAELayer", vit, vit_mae_config),
        LayerMapping("vit_msn", "ViTMSNLayer", vit, vit_msn_config),
        LayerMapping("yolos", "YolosLayer", f"{_ADAPTERS}:YolosLayerAdapter", yolos_config),
        LayerMapping("dinov2", "Dinov2Layer", f"{_ADAPTERS}:Dinov2LayerAdapter", dinov2_config),
        LayerMapping("beit", "BeitLayer", "bt_plugins_vision.beit:BeitLayerAdapter", beit_config),
        LayerMapping(
            "data2vec-vision",
            "Data2VecVisionLayer",
            "bt_plugins_vision.beit:Data2VecVisionLayerAdapter",
            data2vec_vision_config,
        ),
        LayerMapping("vilt", "ViltLayer", f"{_ADAPTERS}:ViltLayerAdapter", vilt_config, example_inputs=vilt_inputs),
        LayerMapping("clip", "CLIPEncoderLayer", clip, clip_config, example_inputs=text_and_image_inputs),
        LayerMapping("clip_vision_model", "CLIPEncoderLayer", clip, clip_vision_config, "transformers:CLIPVisionModel"),
        LayerMapping(
            "clip_text_model", "CLIPEncoderLayer", clip, clip_text_config, "transformers:CLIPTextModel", text_inputs
        ),
        LayerMapping("siglip", "SiglipEncoderLayer", siglip, siglip_config, example_inputs=text_and_image_inputs),
        LayerMapping(
            "siglip_vision_model", "SiglipEncoderLayer", siglip, siglip_vision_config, "transformers:SiglipVisionModel"
        ),
        LayerMapping(
            "siglip_text_model",
            "SiglipEncoderLayer",
            siglip,
            siglip_text_config,
            "transformers:SiglipTextModel",
            text_inputs,
        ),
    ]


@hookimpl
def bt_refused_model_types() -> dict[str, str]:
    windowed = (
        "its attention runs inside shifted local windows with a learned relative position bias, which the "
        "fused kernel's global attention cannot compute"
    )
    reduced = (
        "its attention takes keys and values from a spatially reduced sequence and its feed-forward holds a "
        "depthwise convolution, neither of which the fused encoder layer computes"
    )
    return {
        "swin": windowed,
        "swinv2": windowed,
        "donut-swin": windowed,
        "segformer": reduced,
        "pvt": reduced,
    }

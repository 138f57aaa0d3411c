"""Shared helpers of the vision-pack tests: tiny random-weight models of every architecture, inputs,
and a registry holding only the vision plugin."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bt_plugins_vision.plugin as vision_plugin
import pytest
import torch
import transformers
from torch import nn

from bt_core import BetterTransformer, BetterTransformerBaseLayer
from bt_core.registry import PluginRegistry
from bt_core.testing import registry_with

ATOL = 1e-5
BATCH = 3


@pytest.fixture(autouse=True)
def vision_registry() -> Iterator[PluginRegistry]:
    """A fresh registry holding only the vision plugin, the process default for one test."""
    with registry_with(vision_plugin, name="vision") as registry:
        yield registry


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*taking the reference path.*")
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
        yield


@dataclass(frozen=True)
class Arch:
    """One architecture: a tiny config, the model class to build, and how its output is read."""

    name: str
    config: Callable[[], Any]
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Whether the fused kernel computes this architecture's activation (exact gelu or relu).
    kernel_activation: bool = True

    def build(self, model: str | None = None, **overrides: Any) -> nn.Module:
        return build(self.config, model or self.model, **{**self.overrides, **overrides})


def build(config_fn: Callable[[], Any], model_class: str, **overrides: Any) -> nn.Module:
    """A tiny random-weight model in eval mode; every parameter perturbed so that layer norms and
    layer scales are not the identity (folding a scale of 1.0 would prove nothing)."""
    config = config_fn()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


#: Pixel-input architectures: each one's base model, read through ``last_hidden_state``.
PIXEL_ARCHS: list[Arch] = [
    Arch("vit", vision_plugin.vit_config, "ViTModel"),
    Arch("vit_no_qkv_bias", vision_plugin.vit_config, "ViTModel", {"qkv_bias": False}),
    Arch("deit", vision_plugin.deit_config, "DeiTModel"),
    Arch("vit_mae", vision_plugin.vit_mae_config, "ViTMAEModel"),
    Arch("vit_msn", vision_plugin.vit_msn_config, "ViTMSNModel"),
    Arch("yolos", vision_plugin.yolos_config, "YolosModel"),
    Arch("yolos_no_qkv_bias", vision_plugin.yolos_config, "YolosModel", {"qkv_bias": False}),
    Arch("dinov2", vision_plugin.dinov2_config, "Dinov2Model"),
    Arch("dinov2_no_qkv_bias", vision_plugin.dinov2_config, "Dinov2Model", {"qkv_bias": False}),
    Arch("beit", vision_plugin.beit_config, "BeitModel"),
    Arch("data2vec_vision", vision_plugin.data2vec_vision_config, "Data2VecVisionModel"),
    Arch("clip_vision", vision_plugin.clip_vision_config, "CLIPVisionModel", kernel_activation=False),
    Arch("siglip_vision", vision_plugin.siglip_vision_config, "SiglipVisionModel", kernel_activation=False),
]
ARCH_IDS = [arch.name for arch in PIXEL_ARCHS]


def pixel_inputs(model: nn.Module, batch: int = BATCH) -> dict[str, Any]:
    config = model.config
    inputs: dict[str, Any] = {"pixel_values": vision_plugin.pixels(config, batch)}
    if config.model_type == "vit_mae":
        # ViT-MAE masks patches at random; the same noise masks the same patches in both runs.
        num_patches = (config.image_size // config.patch_size) ** 2
        inputs["noise"] = torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(4))
    return inputs


def run(model: nn.Module, inputs: dict[str, Any], call: Callable[..., Any] | None = None) -> Any:
    """One inference forward, with the global seed fixed so models that sample (ViLT) sample alike."""
    with torch.inference_mode():
        torch.manual_seed(0)
        return (call or model)(**inputs)


def converted_layers(model: nn.Module) -> list[BetterTransformerBaseLayer]:
    return [m for m in model.modules() if isinstance(m, BetterTransformerBaseLayer)]


def convert(model: nn.Module) -> nn.Module:
    converted = BetterTransformer.transform(model)
    assert converted_layers(converted), "nothing was converted"
    return converted


def assert_close(actual: torch.Tensor, expected: torch.Tensor, keep: torch.Tensor | None = None) -> None:
    """Equal shapes and values within ATOL; with ``keep`` ((batch, seq) bool), on kept tokens only."""
    assert actual.shape == expected.shape
    if keep is not None:
        actual, expected = actual[keep], expected[keep]
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def state_dicts_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), f"{key} changed"


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

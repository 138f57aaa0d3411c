"""The plugin as bt-core sees it: found through its entry point, light to import, every mapping with an
example that converts exactly."""

from __future__ import annotations

import subprocess
import sys

import bt_plugins_vision.plugin as vision_plugin
import pytest
import torch

from bt_core import PLUGIN_API_VERSION, LayerMapping
from bt_core._known_packs import KNOWN_PACKS
from bt_core.registry import PluginRegistry

from .conftest import assert_close, convert, converted_layers, pixel_inputs, run

MAPPINGS: list[LayerMapping] = vision_plugin.bt_register_layers()
MODEL_TYPES = sorted({m.model_type for m in MAPPINGS})


def test_entry_point_discovery_finds_the_vision_plugin_for_every_model_type() -> None:
    registry = PluginRegistry()  # discovers installed distributions, as users get it
    names = {info.name: info for info in registry.plugins()}
    assert "vision" in names, f"failures: {[f.describe() for f in registry.failures]}"
    assert (names["vision"].distribution or "").lower().replace("_", "-") == "bt-plugins-vision"
    supported = registry.supported_model_types()
    for model_type in MODEL_TYPES:
        assert supported[model_type] == "vision"


def test_plugin_declares_the_api_major_of_bt_core() -> None:
    assert vision_plugin.bt_plugin_api_version().split(".")[0] == PLUGIN_API_VERSION.split(".")[0]


def test_mapped_model_types_are_the_ones_bt_core_points_users_to() -> None:
    assert set(MODEL_TYPES) == set(KNOWN_PACKS["bt-plugins-vision"])


def test_importing_the_plugin_module_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, bt_plugins_vision.plugin as p; p.bt_register_layers(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_adapter_string_resolves() -> None:
    for mapping in MAPPINGS:
        assert mapping.load_adapter().__module__.startswith("bt_plugins_vision.")


def test_refused_model_types_each_give_a_reason() -> None:
    refused = vision_plugin.bt_refused_model_types()
    assert refused and not set(refused) & set(MODEL_TYPES)
    assert all(len(reason) > 40 for reason in refused.values())


@pytest.mark.parametrize("mapping", MAPPINGS, ids=lambda m: m.model_type)
def test_example_config_builds_a_model_that_converts_exactly(mapping: LayerMapping) -> None:
    """What the conformance kit (``bt_core.testing``) does with each mapping's example."""
    assert mapping.example_config is not None
    config = mapping.example_config()
    assert config.model_type == mapping.model_type
    model_class = mapping.load_example_model_class()
    torch.manual_seed(0)
    model = getattr(model_class, "from_config", model_class)(config).eval()
    inputs = mapping.example_inputs(config, 3) if mapping.example_inputs else pixel_inputs(model)
    expected = run(model, inputs)

    convert(model)
    assert {layer.bt_layer_name.split("(")[-1].rstrip(")") for layer in converted_layers(model)} == {
        mapping.layer_class_name
    }
    actual = run(model, inputs)

    if "image_embeds" in expected:  # CLIP/SigLIP: the pooled, projected outputs of both towers
        for name in ("text_embeds", "image_embeds", "logits_per_image"):
            assert_close(actual[name], expected[name])
        return
    keep = None
    if "attention_mask" in inputs and mapping.model_type != "siglip_text_model":
        keep = inputs["attention_mask"].bool()
        extra = expected.last_hidden_state.shape[1] - keep.shape[1]  # ViLT: image tokens follow the text
        keep = torch.cat([keep, torch.ones(keep.shape[0], extra, dtype=torch.bool)], dim=1)
    assert_close(actual.last_hidden_state, expected.last_hidden_state, keep)

"""How users get the pack: its entry point, its mappings and its import cost."""

from __future__ import annotations

import subprocess
import sys

import bt_plugins_encoders.plugin as encoders_plugin

from bt_core._known_packs import KNOWN_PACKS
from bt_core.registry import PluginRegistry

MODEL_TYPES = {model_type for model_type, _, _ in encoders_plugin.LAYERS}


def test_entry_point_discovery_provides_every_encoder_model_type() -> None:
    registry = PluginRegistry()  # discovers installed entry points, as users' default registry does
    for model_type in sorted(MODEL_TYPES):
        mappings = registry.mappings_for(model_type)
        assert mappings, model_type
        plugin = mappings[0].plugin
        assert (plugin.name, plugin.source, plugin.distribution) == ("encoders", "entry point", "bt-plugins-encoders")
    for model_type in encoders_plugin.REFUSED:
        assert registry.refusal_for(model_type) == (encoders_plugin.REFUSED[model_type], "encoders")


def test_pack_covers_exactly_the_model_types_bt_core_advertises_for_it() -> None:
    import transformers

    advertised = set(KNOWN_PACKS["bt-plugins-encoders"])
    # gte arrived in transformers after 5.10; the pack registers it only where transformers has it.
    if not hasattr(transformers, "GteModel"):
        advertised.discard("gte")
    assert MODEL_TYPES == advertised


def test_every_mapping_has_a_small_example_config() -> None:
    for mapping in encoders_plugin.bt_register_layers():
        config = mapping.example_config()
        assert config.model_type == mapping.model_type
        hidden = getattr(config, "hidden_size", None) or config.dim
        heads = getattr(config, "num_attention_heads", None) or config.n_heads
        layers = getattr(config, "num_hidden_layers", None) or config.n_layers
        assert hidden <= 64 and layers == 2 and heads % 2 == 0, mapping.model_type


def test_every_mapping_names_a_layer_class_the_installed_transformers_builds() -> None:
    from transformers import AutoModel

    for mapping in encoders_plugin.bt_register_layers():
        model = AutoModel.from_config(mapping.example_config())
        classes = {type(m).__name__ for m in model.modules()}
        assert mapping.layer_class_name in classes, mapping.model_type
        mapping.load_adapter()  # the "module:Class" string resolves


def test_importing_the_plugin_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, bt_plugins_encoders.plugin as p; p.bt_register_layers(); p.bt_refused_model_types(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_users_get_the_pack_through_the_default_registry() -> None:
    """No registration by hand: a fresh default registry discovers the pack and converts BERT."""
    import torch

    from bt_core import BetterTransformer
    from bt_core.registry import default_registry, set_default_registry

    from .conftest import CASES, assert_close_on_valid, build, converted_layers, make_batch

    previous = set_default_registry(None)  # the next use discovers entry points, as in a user's process
    try:
        plugin = default_registry().mappings_for("bert")[0].plugin
        assert (plugin.name, plugin.source) == ("encoders", "entry point")
        original = build(next(c for c in CASES if c.id == "bert"))
        converted = BetterTransformer.transform(original, keep_original_model=True)
        assert converted_layers(converted)
        inputs = make_batch(original.config, "padded")
        with torch.inference_mode():
            assert_close_on_valid(
                converted(**inputs).last_hidden_state, original(**inputs).last_hidden_state, inputs["attention_mask"]
            )
    finally:
        set_default_registry(previous)

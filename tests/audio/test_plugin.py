"""The audio plugin as bt-core sees it (found through its entry point, light to import, the types bt-core
points users to), and what it refuses: MMS attention adapters, and a config whose activation no longer names
the layer's, each leaving the model as it was."""

from __future__ import annotations

import subprocess
import sys

import bt_plugins_audio.plugin as audio_plugin
import pytest
import torch
from torch import nn

from bt_core import PLUGIN_API_VERSION, BetterTransformer, LayerMapping, UnsupportedModelError
from bt_core._known_packs import KNOWN_PACKS
from bt_core.registry import PluginRegistry
from bt_plugins_audio import examples

from .conftest import build, clone_state, converted_layers, state_dicts_identical

MAPPINGS: list[LayerMapping] = audio_plugin.bt_register_layers()
MODEL_TYPES = sorted({m.model_type for m in MAPPINGS})


def test_entry_point_discovery_finds_the_audio_plugin_for_every_model_type() -> None:
    registry = PluginRegistry()  # discovers installed distributions, as users get it
    names = {info.name: info for info in registry.plugins()}
    assert "audio" in names, f"failures: {[f.describe() for f in registry.failures]}"
    assert (names["audio"].distribution or "").lower().replace("_", "-") == "bt-plugins-audio"
    supported = registry.supported_model_types()
    for model_type in MODEL_TYPES:
        assert supported[model_type] == "audio"


def test_plugin_declares_the_api_major_of_bt_core() -> None:
    assert audio_plugin.bt_plugin_api_version().split(".")[0] == PLUGIN_API_VERSION.split(".")[0]


def test_mapped_model_types_are_the_ones_bt_core_points_users_to() -> None:
    assert set(MODEL_TYPES) == set(KNOWN_PACKS["bt-plugins-audio"])
    assert MODEL_TYPES == ["data2vec-audio", "hubert", "speech_to_text", "wav2vec2", "wavlm", "whisper"]


def test_both_layer_norm_placements_are_mapped_for_wav2vec2_and_hubert() -> None:
    layers = {(m.model_type, m.layer_class_name) for m in MAPPINGS}
    for prefix, model_type in (("Wav2Vec2", "wav2vec2"), ("Hubert", "hubert"), ("WavLM", "wavlm")):
        assert (model_type, f"{prefix}EncoderLayer") in layers
        assert (model_type, f"{prefix}EncoderLayerStableLayerNorm") in layers


def test_importing_the_plugin_module_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, bt_plugins_audio.plugin as p; p.bt_register_layers(); p.bt_refused_model_types(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_adapter_string_resolves() -> None:
    for mapping in MAPPINGS:
        assert mapping.load_adapter().__module__ in ("bt_plugins_audio.adapters", "bt_plugins_audio.wavlm")


def test_nothing_is_refused_every_speech_encoder_the_pack_knows_converts() -> None:
    assert audio_plugin.bt_refused_model_types() == {}


def _refused(model: nn.Module, match: str) -> None:
    """Refused before the first swap: no layer converted, the same weights, the same outputs."""
    model.eval()
    inputs = (examples.whisper_inputs if "input_features" in _input_names(model) else examples.waveform_inputs)(
        model.config, 2
    )
    before = clone_state(model)
    with torch.inference_mode():
        expected = model(**inputs).last_hidden_state
    with pytest.raises(UnsupportedModelError, match=match):
        BetterTransformer.transform(model)
    assert not converted_layers(model)
    state_dicts_identical(before, model.state_dict())
    with torch.inference_mode():
        assert torch.equal(model(**inputs).last_hidden_state, expected)


def _input_names(model: nn.Module) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(model.forward).parameters)


def test_mms_attention_adapters_are_refused_naming_the_config_field() -> None:
    model = build(examples.wav2vec2_config(stable=True, adapter_attn_dim=8), "Wav2Vec2Model")
    _refused(model, r"encoder.layers.0 \(Wav2Vec2EncoderLayerStableLayerNorm\): config.adapter_attn_dim=8 adds a")


@pytest.mark.parametrize(
    ("config", "model_class", "field"),
    [
        (examples.wav2vec2_config, "Wav2Vec2Model", "hidden_act"),
        (examples.whisper_config, "transformers.models.whisper.modeling_whisper:WhisperEncoder", "activation_function"),
    ],
)
def test_a_config_whose_activation_no_longer_names_the_layers_is_refused(
    config: object, model_class: str, field: str
) -> None:
    model = build(config(), model_class)  # type: ignore[operator]
    setattr(model.config, field, "relu")  # edited after the model was built: the layers still compute gelu
    _refused(model, rf"config.{field}='relu', but the feed-forward computes GELUActivation")


def test_whisper_decoder_layers_are_left_as_they_are() -> None:
    model = build(examples.whisper_config(), "WhisperForConditionalGeneration")
    decoder_before = clone_state(model.model.decoder)
    BetterTransformer.transform(model)
    assert [type(m).__name__ for m in model.model.decoder.layers] == ["WhisperDecoderLayer"] * 2
    assert len(converted_layers(model.model.encoder)) == 2
    state_dicts_identical(decoder_before, model.model.decoder.state_dict())
    with torch.inference_mode():
        model(**examples.whisper_inputs(model.config, 1), decoder_input_ids=torch.tensor([[3]]))

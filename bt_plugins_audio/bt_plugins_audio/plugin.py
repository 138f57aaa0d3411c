"""Entry point of bt-plugins-audio: speech encoders. Light: adapters load on first conversion.

Nothing here imports torch or transformers at module level: adapters are ``"module:Class"`` strings,
and the example configs/inputs (for ``bt_core.testing``) import :mod:`bt_plugins_audio.examples` when
called.
"""

from __future__ import annotations

from typing import Any

from bt_core import LayerMapping, hookimpl

_ADAPTERS = "bt_plugins_audio.adapters"
_POST_NORM = f"{_ADAPTERS}:Wav2Vec2LayerAdapter"
_PRE_NORM = f"{_ADAPTERS}:Wav2Vec2StableLayerNormAdapter"
_SPEECH = f"{_ADAPTERS}:SpeechEncoderLayerAdapter"
_WAVLM = "bt_plugins_audio.wavlm"

# -- example configs and inputs (zero-argument callables; transformers imported when called) -----------


def wav2vec2_config() -> Any:
    from .examples import wav2vec2_config

    return wav2vec2_config()


def wav2vec2_stable_config() -> Any:
    from .examples import wav2vec2_config

    return wav2vec2_config(stable=True)


def hubert_config() -> Any:
    from .examples import hubert_config

    return hubert_config()


def hubert_stable_config() -> Any:
    from .examples import hubert_config

    return hubert_config(stable=True)


def data2vec_audio_config() -> Any:
    from .examples import data2vec_audio_config

    return data2vec_audio_config()


def wavlm_config() -> Any:
    from .examples import wavlm_config

    return wavlm_config()


def wavlm_stable_config() -> Any:
    from .examples import wavlm_config

    return wavlm_config(stable=True)


def whisper_config() -> Any:
    from .examples import whisper_config

    return whisper_config()


def speech_to_text_config() -> Any:
    from .examples import speech_to_text_config

    return speech_to_text_config()


def waveform_inputs(config: Any, batch_size: int) -> dict[str, Any]:
    from .examples import waveform_inputs

    return waveform_inputs(config, batch_size)


def whisper_inputs(config: Any, batch_size: int) -> dict[str, Any]:
    from .examples import whisper_inputs

    return whisper_inputs(config, batch_size)


def speech_to_text_inputs(config: Any, batch_size: int) -> dict[str, Any]:
    from .examples import speech_to_text_inputs

    return speech_to_text_inputs(config, batch_size)


# -- hooks ---------------------------------------------------------------------------------------------


@hookimpl
def bt_plugin_api_version() -> str:
    return "1.1"


@hookimpl
def bt_register_layers() -> list[LayerMapping]:
    def waveform(model_type: str, layer: str, adapter: str, config: Any, model: str) -> LayerMapping:
        return LayerMapping(model_type, layer, adapter, config, f"transformers:{model}", waveform_inputs)

    whisper_encoder = "transformers.models.whisper.modeling_whisper:WhisperEncoder"
    speech_to_text_encoder = "transformers.models.speech_to_text.modeling_speech_to_text:Speech2TextEncoder"
    return [
        waveform("wav2vec2", "Wav2Vec2EncoderLayer", _POST_NORM, wav2vec2_config, "Wav2Vec2Model"),
        waveform("wav2vec2", "Wav2Vec2EncoderLayerStableLayerNorm", _PRE_NORM, wav2vec2_stable_config, "Wav2Vec2Model"),
        waveform("hubert", "HubertEncoderLayer", _POST_NORM, hubert_config, "HubertModel"),
        waveform("hubert", "HubertEncoderLayerStableLayerNorm", _PRE_NORM, hubert_stable_config, "HubertModel"),
        waveform(
            "data2vec-audio", "Data2VecAudioEncoderLayer", _POST_NORM, data2vec_audio_config, "Data2VecAudioModel"
        ),
        waveform("wavlm", "WavLMEncoderLayer", f"{_WAVLM}:WavLMLayerAdapter", wavlm_config, "WavLMModel"),
        waveform(
            "wavlm",
            "WavLMEncoderLayerStableLayerNorm",
            f"{_WAVLM}:WavLMStableLayerNormAdapter",
            wavlm_stable_config,
            "WavLMModel",
        ),
        LayerMapping("whisper", "WhisperEncoderLayer", _SPEECH, whisper_config, whisper_encoder, whisper_inputs),
        LayerMapping(
            "speech_to_text",
            "Speech2TextEncoderLayer",
            _SPEECH,
            speech_to_text_config,
            speech_to_text_encoder,
            speech_to_text_inputs,
        ),
    ]


@hookimpl
def bt_refused_model_types() -> dict[str, str]:
    return {}  # every speech encoder this pack knows converts exactly

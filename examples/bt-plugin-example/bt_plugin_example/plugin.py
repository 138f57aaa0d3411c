"""The entry point bt loads (``bt_core.plugins`` group, name ``example``).

Light on purpose: it imports neither torch nor transformers. The adapter is named as a string and
imported on first conversion; the example config imports the model code only when called.
"""

from __future__ import annotations

from typing import Any

from bt_core import LayerMapping, hookimpl


@hookimpl
def bt_plugin_api_version() -> str:
    return "1.0"


def example_config() -> Any:
    """A tiny ACME encoder config, for bt's conformance kit and ``bt check acme-encoder``."""
    from bt_plugin_example.modeling import AcmeEncoderConfig

    return AcmeEncoderConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, max_positions=64)


@hookimpl
def bt_register_layers() -> list[LayerMapping]:
    return [
        LayerMapping(
            model_type="acme-encoder",
            layer_class_name="AcmeEncoderLayer",
            adapter="bt_plugin_example.adapter:AcmeEncoderLayerAdapter",
            example_config=example_config,
            example_model_class="bt_plugin_example.modeling:AcmeEncoderModel",
        )
    ]


@hookimpl
def bt_refused_model_types() -> dict[str, str]:
    return {
        "acme-encoder-alibi": "its attention adds ALiBi position biases to the scores, which the fused kernel "
        "cannot take",
    }

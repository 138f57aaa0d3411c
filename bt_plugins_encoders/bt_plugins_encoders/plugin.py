"""Entry point of bt-plugins-encoders: the BERT family of text encoders.

Light on purpose: adapters are named as strings and imported only when a model is converted.
"""

from __future__ import annotations

from bt_core import LayerMapping, hookimpl

_ADAPTERS = "bt_plugins_encoders.adapters"


@hookimpl
def bt_plugin_api_version() -> str:
    return "1.0"


@hookimpl
def bt_register_layers() -> list[LayerMapping]:
    return [
        LayerMapping("bert", "BertLayer", f"{_ADAPTERS}:BertLayerAdapter"),
    ]

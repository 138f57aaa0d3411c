"""Entry point of bt-plugins-vision: the ViT family. Light: adapters load on first conversion."""

from __future__ import annotations

from bt_core import LayerMapping, hookimpl

_ADAPTERS = "bt_plugins_vision.adapters"


@hookimpl
def bt_plugin_api_version() -> str:
    return "1.0"


@hookimpl
def bt_register_layers() -> list[LayerMapping]:
    return []

"""bt: run transformers encoders on PyTorch's fused BetterTransformer path, with pluggable adapters.

Importing ``bt_core`` is cheap: torch and transformers load only when a name that needs them is
first used, so plugin discovery and ``bt --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import BetterTransformerError, LayerValidationError, PluginLoadError, UnsupportedModelError
from .hookspecs import PLUGIN_API_VERSION, hookimpl
from .mapping import LayerMapping
from .registry import register_plugin, supported_model_types

if TYPE_CHECKING:
    from ._engine import Strategy, force_strategy
    from ._packing import PackedTokens
    from .convert import BetterTransformer
    from .layer import BetterTransformerBaseLayer

__all__ = [
    "PLUGIN_API_VERSION",
    "BetterTransformer",
    "BetterTransformerBaseLayer",
    "BetterTransformerError",
    "LayerMapping",
    "LayerValidationError",
    "PackedTokens",
    "PluginLoadError",
    "Strategy",
    "UnsupportedModelError",
    "force_strategy",
    "hookimpl",
    "register_plugin",
    "supported_model_types",
]

_LAZY = {
    "BetterTransformer": ".convert",
    "BetterTransformerBaseLayer": ".layer",
    "PackedTokens": "._packing",
    "Strategy": "._engine",
    "force_strategy": "._engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bt_core' has no attribute {name!r}")

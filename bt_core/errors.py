"""The exceptions bt raises. Each message names the culprit and the fix."""

from __future__ import annotations

__all__ = [
    "BetterTransformerError",
    "LayerValidationError",
    "PluginLoadError",
    "UnsupportedModelError",
]


class BetterTransformerError(ValueError):
    """Base class of every error bt raises about a model or a plugin."""


class UnsupportedModelError(BetterTransformerError):
    """The model (or its configuration) has no exact fused equivalent among the loaded plugins."""


class LayerValidationError(BetterTransformerError):
    """An adapter produced fused attributes the kernel cannot run exactly."""


class PluginLoadError(BetterTransformerError):
    """A plugin could not be imported, registered, or is built for another plugin API."""

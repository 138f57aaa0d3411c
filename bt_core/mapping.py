"""The record a plugin returns for each encoder layer it converts."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import PluginLoadError

__all__ = ["LayerMapping"]


@dataclass(frozen=True)
class LayerMapping:
    """One convertible encoder layer.

    Attributes:
        model_type: ``config.model_type`` of the transformers model (e.g. ``"bert"``).
        layer_class_name: class name of the encoder layer to replace (e.g. ``"BertLayer"``).
        adapter: the :class:`bt_core.BetterTransformerBaseLayer` subclass, or ``"module:Class"``.
        example_config: optional zero-argument callable returning a small config of this type; the
            conformance kit (``bt_core.testing``) builds a random-weight model from it.
        example_model_class: optional ``"module:Class"`` or class building the example model from
            ``example_config`` (default: ``transformers.AutoModel``).
        example_inputs: optional callable ``(config, batch_size) -> dict`` of model inputs for the
            kit; by default it makes padded ``input_ids``/``attention_mask`` for text configs and
            ``pixel_values`` for vision configs. An ``attention_mask`` in the dict marks the
            positions whose outputs are compared.
    """

    model_type: str
    layer_class_name: str
    adapter: Any
    example_config: Callable[[], Any] | None = None
    example_model_class: Any = None
    example_inputs: Callable[[Any, int], dict[str, Any]] | None = None

    def load_adapter(self) -> type:
        """The adapter class, importing it if it was given as ``"module:Class"``."""
        return _resolve(self.adapter, f"adapter of {self.model_type!r}")

    def load_example_model_class(self) -> Any:
        if self.example_model_class is None:
            from transformers import AutoModel

            return AutoModel
        return _resolve(self.example_model_class, f"example model class of {self.model_type!r}")


def _resolve(target: Any, what: str) -> Any:
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginLoadError(
            f"the {what} is {target!r}, which cannot be imported ({exc}); fix the mapping's path "
            "('package.module:ClassName') or reinstall the plugin."
        ) from exc

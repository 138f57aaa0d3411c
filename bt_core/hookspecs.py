"""The plugin API: every hook a bt plugin may implement. This module is the plugin author's reference.

A plugin is any object or module with functions marked ``@bt_core.hookimpl`` whose names match the
specs below. Ship it as a distribution with an entry point in the ``bt_core.plugins`` group::

    [project.entry-points."bt_core.plugins"]
    my_models = "my_package.bt_plugin"

Keep the module light: import torch, transformers and your adapters inside the hooks, or name
adapters as ``"module:Class"`` strings in :class:`bt_core.LayerMapping`, so discovery stays cheap.

Versioning: ``PLUGIN_API_VERSION`` is ``MAJOR.MINOR``. A minor bump only adds hooks or optional
fields; a plugin built for an older minor keeps working. A major bump removes or changes a hook;
before that, the old form is deprecated (with a warning naming the plugin) for at least one minor
release. bt-core refuses a plugin whose major differs, naming both versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .mapping import LayerMapping

__all__ = ["PLUGIN_API_VERSION", "PROJECT_NAME", "hookimpl", "hookspec"]

#: The pluggy project name; also the entry-point group is ``f"{PROJECT_NAME}.plugins"``.
PROJECT_NAME = "bt_core"
#: The plugin API this bt-core implements (``MAJOR.MINOR``).
PLUGIN_API_VERSION = "1.0"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: The marker plugins put on their hook implementations.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def bt_plugin_api_version() -> str:
    """Return the plugin API version (``"MAJOR.MINOR"``) this plugin was built for. Required.

    bt-core loads the plugin only when MAJOR equals the major of ``bt_core.PLUGIN_API_VERSION``.

    Added in plugin API 1.0.
    """


@hookspec
def bt_register_layers() -> list[LayerMapping]:
    """Return the encoder layers this plugin converts, one :class:`bt_core.LayerMapping` each.

    Each mapping names a transformers ``model_type`` (``config.model_type``), the class name of its
    encoder layer, and the adapter (a :class:`bt_core.BetterTransformerBaseLayer` subclass, or a
    ``"module:Class"`` string imported on first use). When two plugins map the same ``model_type``,
    bt-core keeps one by a documented rule and warns, naming both (see ``bt_core.registry``).

    Added in plugin API 1.0.
    """


@hookspec
def bt_refused_model_types() -> dict[str, str]:
    """Return ``{model_type: reason}`` for models this plugin knows cannot be converted exactly.

    bt-core quotes the reason when a user tries to convert such a model, instead of a bare
    "unsupported". Optional.

    Added in plugin API 1.0.
    """

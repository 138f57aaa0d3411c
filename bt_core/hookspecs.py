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

What each minor added (the adapter contract lives in :mod:`bt_core.layer`):

- 1.0: the hooks below; adapters assign the fused attributes (``in_proj_weight`` ... ``norm2_bias``,
  ``num_heads``, ``embed_dim``, ``norm1_eps``/``norm2_eps``, ``activation``, ``norm_first``) with
  ``fuse``/``zeros``/``derive``; ``parse_call``/``format_output``; ``pads_every_output``,
  ``reads_padded_positions``, branch dropouts and ``drop_path``.
- 1.1: adapters may *declare* a layer by its parts. ``use_linears(...)`` and ``use_norms(...)`` take
  the layer's own modules, so a PEFT adapter layer or a quantized Linear in a linear's place is
  called rather than read (an adapter that reads such a module's ``.weight`` is refused by name);
  ``head_dim``, ``num_kv_heads`` (grouped-query attention), ``score_scale``, ``rotary``
  (``"half"``/``"interleaved"``, with ``LayerCall.rotary`` cos/sin), ``LayerCall.score_bias``
  (relative position bias), ``attention_window`` (local attention), ``gated_half`` (GLU
  feed-forwards), ``norm1_kind``/``norm2_kind`` (LayerNorm with or without bias, RMSNorm, none); a
  bias or norm weight may be declared absent (``None``) instead of zeros;
  ``feed_forward_inner_dropout``, ``dropout_time_first`` (dropout masks drawn over ``(seq, batch)``, as a
  time-first encoder draws them); the classmethod ``converts(layer, config)`` leaves layers of the
  mapped class that the adapter does not convert (a seq2seq model's decoder blocks) as they are.
  Plugins built for 1.0 load and convert unchanged.
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
PLUGIN_API_VERSION = "1.1"

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

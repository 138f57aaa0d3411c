"""The one check every adapter of this pack makes on a feed-forward's activation.

Adapters declare the activation by its transformers name, read from the config; a config edited after
the model was built would then declare one activation while the layer computes another. So the name
must be a transformers activation name whose module is the kind the layer actually calls.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bt_core import UnsupportedModelError

__all__ = ["check_activation"]


def check_activation(module: nn.Module, name: Any, where: str, field: str) -> str:
    """``name`` (the value of ``config.<field>``), once checked against ``module``, the activation module
    the layer named ``where`` calls; raises :class:`UnsupportedModelError` naming the field and the fix."""
    from transformers.activations import ACT2FN

    if not isinstance(name, str) or name not in ACT2FN:
        raise UnsupportedModelError(
            f"{where}: config.{field} is {name!r}, not a transformers activation name; bt needs the name (e.g. "
            f"'gelu') to compute it exactly. Set config.{field} to the name of the activation the layer uses."
        )
    if type(ACT2FN[name]) is not type(module):
        raise UnsupportedModelError(
            f"{where}: config.{field}={name!r}, but the layer computes {type(module).__name__}; the config no "
            "longer describes the model (edited after it was built?). Rebuild the model from its config, or set "
            f"config.{field} back to the activation the layer uses."
        )
    return name

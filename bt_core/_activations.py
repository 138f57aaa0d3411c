"""The feed-forward activations bt computes, and which of them the fused kernel computes exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UnsupportedModelError

#: The only activations ``torch._transformer_encoder_layer_fwd`` computes: exact (erf) gelu and relu.
KERNEL_ACTIVATIONS = frozenset({"gelu", "relu"})


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _tanh_gelu(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


#: Every activation an adapter may declare, by the name transformers' configs use for it.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": _tanh_gelu,
    "gelu_pytorch_tanh": _tanh_gelu,
    "gelu_fast": _tanh_gelu,
    "quick_gelu": _quick_gelu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation_function(name: str) -> Callable[[Tensor], Tensor]:
    """The function for ``name``; transformers' own one when it has it, so results match bit for bit."""
    if name in KERNEL_ACTIVATIONS:
        return ACTIVATIONS[name]
    try:
        from transformers.activations import ACT2FN

        return ACT2FN[name]
    except (ImportError, KeyError):
        return ACTIVATIONS[name]


def check_activation(module: Any, name: Any, where: str, field: str) -> str:
    """``name`` (the value of ``config.<field>``), once checked against ``module``, the activation module the
    layer named ``where`` calls: adapters declare the activation by name, and a config edited after the model
    was built would otherwise declare one activation while the layer computes another."""
    from transformers.activations import ACT2FN

    if not isinstance(name, str) or name not in ACT2FN:
        raise UnsupportedModelError(
            f"{where}: config.{field} is {name!r}, not a transformers activation name; bt needs the name (e.g. "
            f"'gelu') to compute it exactly. Set config.{field} to the name of the activation the layer uses."
        )
    if type(ACT2FN[name]) is not type(module):
        raise UnsupportedModelError(
            f"{where}: config.{field}={name!r}, but the feed-forward computes {type(module).__name__}; the config no "
            "longer describes the model (edited after it was built?). Rebuild the model from its config, or set "
            f"config.{field} back to the activation the layer uses."
        )
    return name

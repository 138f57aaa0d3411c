"""What a layer's linears and norms are, as far as the strategies are concerned.

A plain ``nn.Linear`` is ``F.linear`` on its weight: its weight can be read, shared and fused, and the
fused kernel can take it. Anything else in a linear's place (a PEFT LoRA layer, a dynamically
quantized Linear) computes something its ``.weight`` does not show, so the strategies call the
module itself. Whether that is exact on packed tokens depends on the module: a LoRA layer maps each
token on its own, but a dynamically quantized Linear picks one activation range for its whole input,
so it must see the padded batch the original layer shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import Tensor, nn

from .errors import UnsupportedModelError


class LinearKind(Enum):
    PLAIN = "plain"  # F.linear on .weight/.bias
    PER_TOKEN = "per_token"  # called as a module; each output token depends on its input token alone
    WHOLE_INPUT = "whole_input"  # called as a module, on the padded batch as the original calls it


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def linear_kind(module: nn.Module) -> LinearKind | None:
    """How the strategies may compute ``module`` in a linear's place; None when bt does not know it."""
    cls = type(module)
    if isinstance(module, nn.Linear) and cls.forward is nn.Linear.forward:
        return LinearKind.PLAIN
    names = {c.__name__ for c in cls.__mro__}
    if "BaseTunerLayer" in names:  # every PEFT adapter layer (LoRA, DoRA, IA3, ...) wraps a base layer per token
        return LinearKind.PER_TOKEN
    if cls.__module__.startswith("bitsandbytes") and isinstance(module, nn.Linear):  # LLM.int8 / 4-bit: per row
        return LinearKind.PER_TOKEN
    if cls.__module__.startswith("torch.ao.nn.quantized.dynamic"):  # per-tensor dynamic activation range
        return LinearKind.WHOLE_INPUT
    return None


def refuse_unknown_linear(module: nn.Module, path: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{path} is a {_class_name(module)}, which bt does not know how to compute exactly (it computes plain "
        "nn.Linear, PEFT adapter layers and torch.ao dynamically quantized Linear). Merge or remove the "
        "wrapper before converting (for PEFT: model.merge_and_unload()), or keep this model unconverted."
    )


def is_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` stands where a linear would and computes more than ``F.linear`` on its weight."""
    kind = linear_kind(module)
    if kind is None:
        return isinstance(module, nn.Linear)  # a Linear subclass with its own forward
    return kind is not LinearKind.PLAIN


@dataclass(frozen=True)
class NormSpec:
    """One norm of a layer: ``kind`` is ``"layer"`` (LayerNorm), ``"rms"`` (the llama family's RMSNorm: the
    input cast to float32, scaled, cast back), ``"t5_rms"`` (T5's: float32 statistics, the input scaled in
    its own precision; the two differ only for float64 inputs) or ``"none"`` (identity)."""

    kind: str
    weight: Tensor | None = None
    bias: Tensor | None = None
    eps: float = 0.0


def read_norm(module: nn.Module, path: str) -> NormSpec:
    """The norm ``module`` computes, or a refusal naming its class and the norms bt computes."""
    if isinstance(module, nn.Identity):
        return NormSpec("none")
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward:
        if module.weight is None:
            raise UnsupportedModelError(
                f"{path}: a LayerNorm without elementwise_affine is not a layer shape bt declares; keep this "
                "model unconverted."
            )
        return NormSpec("layer", module.weight, module.bias, float(module.eps))
    name = type(module).__name__
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    weight = getattr(module, "weight", None)
    # T5LayerNorm and the llama-style *RMSNorm classes: x * rsqrt(mean(x^2) + eps) in float32, times weight.
    if (name.endswith("RMSNorm") or name.endswith("T5LayerNorm")) and isinstance(weight, Tensor):
        if eps is None:
            raise UnsupportedModelError(f"{path}: {name} has no epsilon bt can read; keep this model unconverted.")
        if getattr(module, "bias", None) is not None:
            raise UnsupportedModelError(f"{path}: {name} has a bias, which an RMSNorm does not; cannot convert.")
        return NormSpec("t5_rms" if name.endswith("T5LayerNorm") else "rms", weight, None, float(eps))
    raise UnsupportedModelError(
        f"{path} is a {_class_name(module)}; bt computes nn.LayerNorm (with or without bias), RMSNorm and "
        "identity norms. Keep this model unconverted, or report the norm class to the plugin's authors."
    )

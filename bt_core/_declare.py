"""How adapters declare a layer's parts and tensors (the helpers of :class:`bt_core.BetterTransformerBaseLayer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._modules import LinearKind, linear_kind, read_norm, refuse_unknown_linear
from ._restore import RestorableLayer
from .errors import LayerValidationError

_LINEAR_ROLES = ("in_proj", "out_proj", "linear1", "linear2")


class DeclaringLayer(RestorableLayer):
    """The declaration helpers; state lives in the attributes ``BetterTransformerBaseLayer.__init__`` sets."""

    # -- declaring parts ---------------------------------------------------------------------------

    def use_linears(self, **roles: nn.Module | Sequence[nn.Module]) -> None:
        """Declare linears by module: ``in_proj=(q, k, v)`` or one fused qkv module, ``out_proj=``,
        ``linear1=`` (one module, or several whose outputs are concatenated, e.g. ``(gate, up)``), ``linear2=``.

        Plain ``nn.Linear`` weights are shared (or fused, for several); a PEFT adapter layer or a
        quantized Linear is kept and called. A bias-free linear gets no bias. (Plugin API 1.1.)
        """
        paths = {id(m): p for p, m in self._bt_original_layer.named_modules()}
        for role, given in roles.items():
            if role not in _LINEAR_ROLES:
                raise LayerValidationError(f"use_linears: unknown role {role!r}; roles: {', '.join(_LINEAR_ROLES)}.")
            modules = tuple(given) if isinstance(given, (tuple, list)) else (given,)
            kinds = [linear_kind(m) for m in modules]
            for module, kind in zip(modules, kinds, strict=True):
                if kind is None:
                    raise refuse_unknown_linear(module, f"{self._bt_path}.{paths.get(id(module), role)}")
            if any(kind is not LinearKind.PLAIN for kind in kinds):
                self.wrapped[role] = nn.ModuleList(modules)
                self._bt_calls[role] = modules
                if LinearKind.WHOLE_INPUT in kinds:
                    self.__dict__["_bt_whole_input"] = True
                weight = bias = None
            else:
                weight = modules[0].weight if len(modules) == 1 else self.fuse(*(m.weight for m in modules))
                biases = [m.bias for m in modules]
                if all(b is None for b in biases):
                    bias = None
                elif len(modules) == 1:
                    bias = biases[0]
                else:
                    bias = self.fuse(*(b if b is not None else self.zeros(m.weight.shape[0], like=m.weight)
                                       for m, b in zip(modules, biases, strict=True)))  # fmt: skip
            self._declare(f"{role}_weight", weight)
            self._declare(f"{role}_bias", bias)

    def use_norms(self, **norms: nn.Module) -> None:
        """Declare ``norm1=`` (before or after attention) and ``norm2=`` (feed-forward) by module:
        ``nn.LayerNorm`` with or without bias, an RMSNorm (T5LayerNorm, ``*RMSNorm``) or ``nn.Identity``."""
        for which, module in norms.items():
            if which not in ("norm1", "norm2"):
                raise LayerValidationError(f"use_norms: unknown norm {which!r}; declare norm1 and norm2.")
            spec = read_norm(module, f"{self._bt_path} {which}")
            setattr(self, f"{which}_kind", spec.kind)
            setattr(self, f"{which}_eps", spec.eps)
            self._declare(f"{which}_weight", spec.weight)
            self._declare(f"{which}_bias", spec.bias)

    @staticmethod
    def is_plain_linear(module: nn.Module) -> bool:
        """Whether ``module`` is ``F.linear`` on its weight (not a LoRA layer, quantized Linear, ...)."""
        return linear_kind(module) is LinearKind.PLAIN

    def _declare(self, name: str, value: Tensor | None) -> None:
        if value is None:
            self._bt_absent.add(name)
            setattr(self, name, None)
        else:
            self._bt_absent.discard(name)
            setattr(self, name, value)

    # -- helpers for adapters (plugin API 1.0) -----------------------------------------------------

    def fuse(self, *parts: Tensor) -> nn.Parameter:
        """Concatenate ``parts`` along dim 0 (q, k, v into ``in_proj``) into a new parameter."""
        fused = nn.Parameter(torch.cat([p.detach() for p in parts], dim=0), requires_grad=parts[0].requires_grad)
        self._bt_fused_sources[id(fused)] = list(parts)
        return fused

    def zeros(self, size: int, like: Tensor) -> nn.Parameter:
        """A zero bias of ``size`` elements for a projection the original layer computes without one.

        Frozen: the original has no such bias, so training must not grow one that ``reverse`` would drop.
        """
        return nn.Parameter(torch.zeros(size, dtype=like.dtype, device=like.device), requires_grad=False)

    def derive(
        self, value: Tensor, *sources: Tensor, inverse: Callable[[Tensor], Sequence[Tensor]] | None = None
    ) -> nn.Parameter:
        """A parameter computed from ``sources`` (e.g. a weight with a layer scale folded in).

        The sources stay with the original layer, so ``reverse`` gives them back bit for bit. If the
        derived parameter changes after conversion (training), ``reverse`` computes the sources'
        new values as ``inverse(current_value)`` (one tensor per source, in order); without an
        ``inverse`` it refuses to reverse rather than drop the change.
        """
        derived = nn.Parameter(value.detach().clone(), requires_grad=sources[0].requires_grad if sources else False)
        self._bt_derived_sources.update(id(s) for s in sources)
        self._bt_derived[id(derived)] = (list(sources), inverse)
        return derived

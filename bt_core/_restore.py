"""Giving the original layer back bit for bit: where each original parameter lives in a converted layer.

Every fused attribute is one of: the original parameter itself (shared), a concatenation of original
parameters (``fuse``: their slices go back), or a value derived from them (``derive``: the sources are
kept, and a change after conversion goes back through the adapter's inverse). Planning happens before
any layer is swapped, so a model whose layers cannot be planned is refused untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: The tensors the fused kernel takes, in the order it takes them.
FUSED_PARAMETERS: tuple[str, ...] = (
    "in_proj_weight",
    "in_proj_bias",
    "out_proj_weight",
    "out_proj_bias",
    "linear1_weight",
    "linear1_bias",
    "linear2_weight",
    "linear2_bias",
    "norm1_weight",
    "norm1_bias",
    "norm2_weight",
    "norm2_bias",
)


class RestorableLayer(nn.Module):
    """The bookkeeping half of :class:`bt_core.BetterTransformerBaseLayer`."""

    def _bt_plan_restore(self) -> None:
        """Record, per original parameter, where its value lives in this layer, and the version of each
        derived parameter (in-place updates such as optimizer steps bump it)."""
        original = self._bt_original_layer
        names_by_id = {id(p): name for name, p in original.named_parameters(remove_duplicate=False)}
        shared: dict[str, str] = {}
        sliced: dict[str, tuple[str, int, int]] = {}
        derived: dict[str, tuple[list[str | None], Any]] = {}
        for attr in FUSED_PARAMETERS:
            value = getattr(self, attr, None)
            if value is None:
                continue
            if id(value) in names_by_id:
                shared[names_by_id[id(value)]] = attr
                continue
            if id(value) in self._bt_derived:
                sources, inverse = self._bt_derived[id(value)]
                derived[attr] = ([names_by_id.get(id(source)) for source in sources], inverse)
                continue
            offset = 0
            for source in self._bt_fused_sources.get(id(value), []):
                size = source.shape[0]
                name = names_by_id.get(id(source))
                if name is not None and id(source) not in self._bt_derived_sources:
                    sliced[name] = (attr, offset, offset + size)
                offset += size
        self.__dict__["_bt_restore_plan"] = (shared, sliced, derived)
        self.__dict__["_bt_derived_versions"] = {attr: getattr(self, attr)._version for attr in derived}

    def _bt_release_original(self) -> None:
        """Free the original copies of sliced parameters; ``reverse`` rebuilds them from the fused ones."""
        _, sliced, _ = self._bt_restore_plan
        for name in sliced:
            owner, pname = _owner(self._bt_original_layer, name)
            old = getattr(owner, pname)
            setattr(owner, pname, nn.Parameter(old.detach().to("meta"), requires_grad=old.requires_grad))

    def _bt_changed_derived(self) -> list[str]:
        _, _, derived = self._bt_restore_plan
        versions = self._bt_derived_versions
        return [attr for attr in derived if getattr(self, attr)._version != versions.get(attr)]

    def _bt_restore_blocker(self) -> str | None:
        """Why ``reverse`` cannot give this layer back without losing a change, or None."""
        _, _, derived = self._bt_restore_plan
        lost = [attr for attr in self._bt_changed_derived() if derived[attr][1] is None]
        if lost:
            return (
                f"{type(self).__name__} ({self.bt_layer_name}): {', '.join(lost)} changed after conversion and "
                "the adapter gives no inverse to carry the change back to the original parameters; keep "
                "using the converted model, or give derive() an inverse in the adapter."
            )
        return None

    def _bt_restore_original(self) -> nn.Module:
        """The original layer, its parameters holding this layer's current values."""
        original = self._bt_original_layer
        shared, sliced, derived = self._bt_restore_plan
        for attr in self._bt_changed_derived():
            names, inverse = derived[attr]
            for name, value in zip(names, inverse(getattr(self, attr).detach()), strict=True):
                if name is None:
                    continue
                owner, pname = _owner(original, name)
                old = getattr(owner, pname)
                setattr(owner, pname, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
        for name, attr in shared.items():
            owner, pname = _owner(original, name)
            setattr(owner, pname, getattr(self, attr))
        for name, (attr, start, end) in sliced.items():
            owner, pname = _owner(original, name)
            old = getattr(owner, pname)
            value = getattr(self, attr)[start:end].detach().clone()
            setattr(owner, pname, nn.Parameter(value, requires_grad=old.requires_grad))
        reference = next((p for p in self.parameters() if p.is_floating_point()), None)
        if reference is not None:
            _to(original, reference)
        original.train(self.training)
        return original


def _to(module: nn.Module, reference: torch.Tensor) -> None:
    """Move ``module`` to the converted layer's device and dtype (the user may have moved the model)."""
    if any(p.device != reference.device or p.dtype != reference.dtype for p in module.parameters()):
        module.to(device=reference.device, dtype=reference.dtype)


def _owner(root: nn.Module, qualified_name: str) -> tuple[nn.Module, str]:
    module_path, _, pname = qualified_name.rpartition(".")
    return (root.get_submodule(module_path) if module_path else root), pname

"""``BetterTransformer.transform`` and ``reverse``: the walk over a model's module tree.

Conversion is two-phase so that a failure loses nothing: every adapter is built and validated
against the untouched model first; only when all succeed are the layers swapped in.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from . import _hf_compat
from ._allocator import keep_freed_memory
from ._known_packs import pack_for
from ._modules import is_wrapper
from ._preflight import check_attention_implementation, preflight
from .errors import BetterTransformerError, UnsupportedModelError
from .layer import BetterTransformerBaseLayer, building
from .registry import PluginRegistry, RegisteredMapping, default_registry

__all__ = ["BetterTransformer"]

ModelT = TypeVar("ModelT", bound=nn.Module)


@dataclass
class _Swap:
    owner: nn.Module
    parent_name: str
    child_name: str
    original: nn.Module
    replacement: BetterTransformerBaseLayer


class BetterTransformer:
    """Convert transformers encoders to PyTorch's fused encoder path, and back."""

    @staticmethod
    def transform(
        model: ModelT, keep_original_model: bool = False, *, registry: PluginRegistry | None = None
    ) -> ModelT:
        """Replace every supported encoder layer in ``model`` with its fused equivalent.

        ``model`` may be a transformers model, a task-head model, or any module containing one
        (a sentence-transformers ``SentenceTransformer``). In place by default, keeping no duplicate
        weights; with ``keep_original_model=True`` a deep copy is converted and ``model`` is left
        untouched. On any error the model is left exactly as it was. Converting for the CPU on glibc
        also keeps freed memory for reuse, process-wide (``BT_MALLOC=system`` opts out; see ``_allocator``).
        """
        registry = registry or default_registry()
        if BetterTransformer.is_converted(model):
            raise BetterTransformerError(
                f"{type(model).__name__} is already converted; call BetterTransformer.reverse(model) "
                "first if you want to convert it again."
            )
        target = copy.deepcopy(model) if keep_original_model else model
        preflight(target)
        # Built outside inference mode, so that fused and derived parameters are ordinary tensors even
        # when the model's are inference tensors (made or loaded under torch.inference_mode()).
        with torch.inference_mode(False), torch.no_grad():
            swaps = _plan(target, registry)
            _commit(target, swaps)
        first = next(target.parameters(), None)
        if first is None or first.device.type == "cpu":
            keep_freed_memory()  # see _allocator: batches stop faulting their temporaries in page by page
        return target

    @staticmethod
    def reverse(model: ModelT) -> ModelT:
        """Give back the original layers, with a ``state_dict`` bit-identical to the original model's."""
        converted = [(name, m) for name, m in model.named_modules() if isinstance(m, BetterTransformerBaseLayer)]
        if not converted:
            raise BetterTransformerError(
                f"{type(model).__name__} has no converted layers; reverse() takes a model returned by "
                "BetterTransformer.transform()."
            )
        blockers = [reason for _, layer in converted if (reason := layer._bt_restore_blocker())]
        if blockers:
            raise BetterTransformerError(f"cannot reverse without losing changes: {blockers[0]}")
        for name, layer in converted:
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, layer._bt_restore_original())
        _hf_compat.reset_output_capture(model)
        for module in model.modules():
            module.__dict__.pop("save_pretrained", None)
        return model

    @staticmethod
    def is_converted(model: nn.Module) -> bool:
        """Whether ``model`` holds layers converted by :meth:`transform`."""
        return any(isinstance(m, BetterTransformerBaseLayer) for m in model.modules())


def _transformers_models(root: nn.Module) -> list[nn.Module]:
    from transformers import PreTrainedModel

    return [m for m in root.modules() if isinstance(m, PreTrainedModel)]


def _plan(root: nn.Module, registry: PluginRegistry) -> list[_Swap]:
    owners = _transformers_models(root)
    if not owners:
        raise UnsupportedModelError(
            f"{type(root).__name__} contains no transformers model (PreTrainedModel); "
            "BetterTransformer converts transformers encoders and modules that hold one."
        )
    names = {id(m): n for n, m in root.named_modules()}
    swaps: dict[int, _Swap] = {}
    unmatched: list[tuple[str, list[RegisteredMapping], set[str]]] = []
    model_types: list[str] = []
    for owner in owners:
        model_type = getattr(owner.config, "model_type", None) or ""
        model_types.append(model_type)
        mappings = registry.mappings_for(model_type)
        if not mappings:
            continue
        by_class = {m.mapping.layer_class_name: m for m in mappings}
        found = 0
        for module in owner.modules():
            registered = by_class.get(type(module).__name__)
            if registered is None or not registered.mapping.load_adapter().converts(module, owner.config):
                continue
            found += 1
            if found == 1:
                check_attention_implementation(owner, names.get(id(owner), ""))
            if id(module) not in swaps:
                swaps[id(module)] = _build(root, owner, names[id(module)], module, registered)
        if not found:
            unmatched.append((model_type, mappings, {type(m).__name__ for m in owner.modules()}))
    if unmatched and not swaps:
        model_type, mappings, classes = unmatched[0]
        expected = ", ".join(sorted(m.mapping.layer_class_name for m in mappings))
        layers = sorted(c for c in classes if "Layer" in c or "Block" in c)
        raise UnsupportedModelError(
            f"model type {model_type!r} is mapped to layer class {expected} by plugin "
            f"{mappings[0].plugin.name!r}, but the model has no module of that class (layer-like "
            f"classes found: {', '.join(layers) or 'none'}). The installed transformers may have renamed "
            "it: upgrade the plugin, or install a transformers release it supports."
        )
    if not swaps:
        raise _unsupported(model_types, registry)
    return list(swaps.values())


def _build(
    root: nn.Module, owner: nn.Module, qualified_name: str, layer: nn.Module, registered: RegisteredMapping
) -> _Swap:
    adapter = registered.mapping.load_adapter()
    description = f"{qualified_name} ({type(layer).__name__})"
    try:
        with building(qualified_name, description):
            replacement = adapter(layer, owner.config)
    except BetterTransformerError:
        raise
    except Exception as exc:
        culprit = next(((p, m) for p, m in layer.named_modules() if is_wrapper(m)), None)
        if culprit is not None:
            path, module = culprit
            raise UnsupportedModelError(
                f"{qualified_name}.{path} is a {type(module).__module__}.{type(module).__qualname__}, which "
                f"adapter {adapter.__name__} from plugin {registered.plugin.name!r} cannot read as a plain "
                f"linear ({type(exc).__name__}: {exc}). Merge or remove the wrapper before converting, or "
                "upgrade the plugin to one that declares its linears with use_linears (plugin API 1.1)."
            ) from exc
        raise BetterTransformerError(
            f"adapter {adapter.__name__} from plugin {registered.plugin.name!r} failed on layer "
            f"{description}: {type(exc).__name__}: {exc}. The installed transformers may have changed "
            "this layer; upgrade the plugin or report it to its authors."
        ) from exc
    replacement.bt_layer_name = description
    replacement.validate_bettertransformer()
    replacement._bt_plan_restore()
    parent_name, _, child_name = qualified_name.rpartition(".")
    return _Swap(owner, parent_name, child_name, layer, replacement)


def _unsupported(model_types: list[str], registry: PluginRegistry) -> UnsupportedModelError:
    model_type = model_types[0] if model_types else "unknown"
    supported = ", ".join(registry.supported_model_types()) or "none (no bt plugin is installed)"
    refusal = registry.refusal_for(model_type)
    if refusal is not None:
        reason, plugin = refusal
        return UnsupportedModelError(
            f"model type {model_type!r} cannot be converted exactly: {reason} (plugin {plugin!r}). "
            f"Supported model types: {supported}."
        )
    pack = pack_for(model_type)
    hint = f" Install {pack} (`pip install {pack}`) to add it." if pack else ""
    failures = "".join(f" Note: {f.describe()}." for f in registry.failures)
    return UnsupportedModelError(
        f"model type {model_type!r} is not supported by the installed bt plugins.{hint} "
        f"Supported model types: {supported}.{failures}"
    )


def _commit(root: nn.Module, swaps: list[_Swap]) -> None:
    stacks: dict[str, list[_Swap]] = {}
    for swap in swaps:
        stacks.setdefault(swap.parent_name, []).append(swap)
    for stack in stacks.values():
        stack.sort(key=lambda s: int(s.child_name) if s.child_name.isdigit() else 0)
        for position, swap in enumerate(stack):
            swap.replacement.is_first_layer = position == 0
            swap.replacement.is_last_layer = position == len(stack) - 1 or swap.replacement.pads_every_output
    done: list[_Swap] = []
    try:
        for swap in swaps:
            parent = root.get_submodule(swap.parent_name) if swap.parent_name else root
            swap.replacement.train(swap.original.training)
            setattr(parent, swap.child_name, swap.replacement)
            done.append(swap)
            swap.replacement._bt_release_original()
    except BaseException:
        for swap in done:  # nothing half-converted: put every original back as it was
            parent = root.get_submodule(swap.parent_name) if swap.parent_name else root
            setattr(parent, swap.child_name, swap.replacement._bt_restore_original())
        raise
    _hf_compat.reset_output_capture(root)
    for swap in swaps:
        _hf_compat.reset_output_capture(swap.original)  # kept aside for reverse, which re-hooks it
        _hf_compat.install_output_capture(swap.owner, type(swap.original), swap.replacement)
    for owner in _transformers_models(root):
        owner.__dict__["save_pretrained"] = functools.partial(_refuse_save, owner)


def _refuse_save(model: nn.Module, *args: Any, **kwargs: Any) -> None:
    raise BetterTransformerError(
        f"{type(model).__name__} holds BetterTransformer layers, whose fused weights transformers "
        "cannot load. Call `model = BetterTransformer.reverse(model)` first, then save_pretrained(); "
        "convert again after saving."
    )

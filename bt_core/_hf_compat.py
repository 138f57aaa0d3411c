"""The few transformers internals bt relies on, behind one door so a release that moves them breaks here.

transformers 5.x records ``output_hidden_states`` and ``output_attentions`` with forward hooks that
it installs once per model on the modules of the classes named in ``_can_record_outputs``. A
converted layer is not of those classes, so the conversion re-installs the hooks on converted
layers itself, and resets the record so transformers re-installs its own after a swap.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

try:  # transformers >= 5.10
    from transformers.utils import output_capturing as _capturing
except ImportError:  # pragma: no cover - older layouts keep no hooks to mend
    _capturing = None  # type: ignore[assignment]

_HOOK_NAME = "output_capturing_hook"
_INSTALLED_FLAG = "_output_capturing_hooks_installed"


def output_capture_requested(key: str) -> bool:
    """Whether the running forward is recording ``key`` (``"hidden_states"`` or ``"attentions"``)."""
    if _capturing is None:
        return False
    collected = _capturing._active_collector.get()
    return bool(collected) and key in collected


def reset_output_capture(root: nn.Module) -> None:
    """Remove transformers' recording hooks and flags under ``root``; it re-installs them on next use."""
    for module in root.modules():
        for hook_id, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") == _HOOK_NAME:
                del module._forward_hooks[hook_id]
        if _INSTALLED_FLAG in module.__dict__:
            delattr(module, _INSTALLED_FLAG)


def install_output_capture(owner: nn.Module, original_class: type, layer: Any) -> None:
    """Hook ``layer`` (a converted layer) the way transformers would have hooked the original one."""
    if _capturing is None:
        return
    # A plain dict keyed by the class string up to 5.2x, a dict subclass with the same keys later.
    flags = dict.get(_capturing._CAN_RECORD_REGISTRY, str(owner.__class__)) or {}
    captures: list[tuple[str, str, int, bool]] = []
    for key, specs in flags.items():
        for spec in specs if isinstance(specs, list) else [specs]:
            if not isinstance(spec, _capturing.OutputRecorder):
                index = 0 if "hidden_states" in key else 1
                spec = _capturing.OutputRecorder(
                    target_class=spec if not isinstance(spec, str) else None,
                    index=index,
                    class_name=spec if isinstance(spec, str) else None,
                )
            target = spec.target_class
            if target is None:
                continue
            if key == "hidden_states" and spec.layer_name is None and issubclass(original_class, target):
                captures.append(("layer", key, spec.index, spec.capture_initial_hidden_state))
            elif key == "attentions" and _contains(layer.original_layer, target, spec.layer_name, layer._bt_path):
                # ESM names the self-attention (layer_name="attention") to tell it from cross-attention;
                # wav2vec2 names the stack (layer_name="encoder"), which only the layer's own path holds.
                captures.append(("attention_probe", key, 1, True))
    layer.__dict__["_bt_output_captures"] = captures
    reinstall_output_capture(layer)


def reinstall_output_capture(layer: Any) -> None:
    """(Re-)install the hooks ``install_output_capture`` chose, e.g. after unpickling ``layer``."""
    if _capturing is None:
        return
    for where, key, index, capture_initial in layer.__dict__.get("_bt_output_captures", ()):
        module = layer if where == "layer" else getattr(layer, where)
        _capturing.install_output_capuring_hook(module, key, index, capture_initial)


def without_capture_hooks(state: dict[str, Any]) -> dict[str, Any]:
    """A module's ``__dict__`` minus transformers' recording hooks, which are closures pickle refuses."""
    hooks = state.get("_forward_hooks")
    if not hooks or not any(getattr(h, "__name__", "") == _HOOK_NAME for h in hooks.values()):
        return state
    state = dict(state)
    state["_forward_hooks"] = type(hooks)((k, h) for k, h in hooks.items() if getattr(h, "__name__", "") != _HOOK_NAME)
    return state


def _contains(module: nn.Module, target: type, layer_name: str | None = None, path_in_model: str = "") -> bool:
    """Whether ``module`` holds a ``target``; with ``layer_name``, at a path naming it as transformers
    matches it (``".attention."`` in the dotted path from the model's root: ``path_in_model``, where
    ``module`` sits, then the path inside it)."""
    wanted = None if layer_name is None else "." + layer_name.strip(".") + "."
    return any(
        isinstance(m, target) and (wanted is None or wanted in f".{path_in_model}.{path}.")
        for path, m in module.named_modules()
    )


class AttentionProbe(nn.Module):
    """A parameter-free module the reference path calls with the attention probabilities.

    transformers records ``output_attentions`` with forward hooks on attention modules; a converted
    layer has none, so the conversion hooks this probe instead.
    """

    def forward(self, context: Tensor, probabilities: Tensor) -> tuple[Tensor, Tensor]:
        return context, probabilities

    def __getstate__(self) -> dict[str, Any]:
        return without_capture_hooks(self.__dict__)

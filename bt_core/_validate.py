"""Checking an adapter's declarations before any layer is swapped, and whether the fused kernel fits them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import nn

from ._activations import ACTIVATIONS, KERNEL_ACTIVATIONS
from ._modules import is_wrapper
from ._restore import FUSED_PARAMETERS
from .errors import LayerValidationError, UnsupportedModelError

if TYPE_CHECKING:
    from .layer import BetterTransformerBaseLayer

_GATED_HALVES = (None, "first", "second")
_ROTARY = (None, "half", "interleaved")
_NORM_KINDS = ("layer", "rms", "t5_rms", "none")


def validate(layer: BetterTransformerBaseLayer) -> None:
    """Refuse, naming the layer, attribute and value, anything the strategies would compute wrongly."""
    where = f"{type(layer).__name__} (converting {layer.bt_layer_name})"
    absent = layer._bt_absent
    for name in (*FUSED_PARAMETERS, "num_heads", "embed_dim"):
        if getattr(layer, name, None) is None and name not in absent:
            raise LayerValidationError(f"{where}: attribute `{name}` was not set; the adapter must assign it.")
    for which in ("norm1", "norm2"):
        kind = getattr(layer, f"{which}_kind")
        if kind not in _NORM_KINDS:
            raise LayerValidationError(f"{where}: {which}_kind={kind!r}; declare one of {', '.join(_NORM_KINDS)}.")
        if kind != "none" and getattr(layer, f"{which}_eps", None) is None:
            raise LayerValidationError(f"{where}: attribute `{which}_eps` was not set; the adapter must assign it.")
    for name, value, allowed in (("gated_half", layer.gated_half, _GATED_HALVES), ("rotary", layer.rotary, _ROTARY)):
        if value not in allowed:
            raise LayerValidationError(f"{where}: {name}={value!r}; declare one of {allowed}.")
    embed_dim, heads = int(layer.embed_dim), int(layer.num_heads)  # type: ignore[arg-type]
    kv_heads = int(layer.num_kv_heads or heads)
    if heads <= 0 or heads % kv_heads:
        raise LayerValidationError(f"{where}: num_heads={heads} is not a multiple of num_kv_heads={kv_heads}.")
    if layer.head_dim is None and embed_dim % heads:
        raise LayerValidationError(
            f"{where}: embed_dim={embed_dim} is not divisible by num_heads={heads}; declare head_dim if the "
            "attention width differs from the hidden size."
        )
    _check_shapes(layer, where, embed_dim, heads, kv_heads, layer.attention_head_dim)
    if layer.activation not in ACTIVATIONS:
        raise LayerValidationError(
            f"{where}: activation {layer.activation!r} is not one bt computes exactly; "
            f"supported: {', '.join(sorted(ACTIVATIONS))}."
        )
    dtypes = {getattr(layer, name).dtype for name in FUSED_PARAMETERS if getattr(layer, name, None) is not None}
    if len(dtypes) > 1:
        raise LayerValidationError(
            f"{where}: the fused parameters mix dtypes {sorted(map(str, dtypes))}; cast the model "
            "to one dtype (e.g. model.float()) before converting."
        )
    _check_no_hidden_wrapper(layer)


def _check_shapes(
    layer: BetterTransformerBaseLayer, where: str, embed_dim: int, heads: int, kv_heads: int, head_dim: int
) -> None:
    linear2 = getattr(layer, "linear2_weight", None)
    ffn = linear2.shape[1] if linear2 is not None else None
    qkv = (heads + 2 * kv_heads) * head_dim
    expected = {
        "in_proj_weight": (qkv, embed_dim),
        "in_proj_bias": (qkv,),
        "out_proj_weight": (embed_dim, heads * head_dim),
        "out_proj_bias": (embed_dim,),
        "linear1_weight": (ffn * (2 if layer.gated_half else 1), embed_dim) if ffn else None,
        "linear1_bias": (ffn * (2 if layer.gated_half else 1),) if ffn else None,
        "linear2_bias": (embed_dim,),
        "norm1_weight": (embed_dim,),
        "norm1_bias": (embed_dim,),
        "norm2_weight": (embed_dim,),
        "norm2_bias": (embed_dim,),
    }
    for name, shape in expected.items():
        value = getattr(layer, name, None)
        if value is None or shape is None or tuple(value.shape) == shape:
            continue
        pruned = name.startswith(("in_proj", "out_proj")) and _looks_pruned(value, name, embed_dim, head_dim)
        if pruned:
            raise UnsupportedModelError(
                f"{where}: `{name}` has shape {tuple(value.shape)} where {shape} was expected: attention heads "
                "were pruned from this layer (prune_heads / prune_linear_layer), and the layer still declares "
                f"{heads} heads. bt converts only unpruned layers; convert before pruning, or keep this model "
                "unconverted."
            )
        raise LayerValidationError(
            f"{where}: `{name}` has shape {tuple(value.shape)}, expected {shape} for embed_dim={embed_dim}, "
            f"{heads} heads of {head_dim} and a feed-forward size of {ffn}."
        )


def _looks_pruned(value: object, name: str, embed_dim: int, head_dim: int) -> bool:
    shape = tuple(value.shape)  # type: ignore[attr-defined]
    width = shape[1] if name == "out_proj_weight" else shape[0] // (1 if name == "out_proj_bias" else 3)
    return name != "out_proj_bias" and width < embed_dim and width % head_dim == 0


def _check_no_hidden_wrapper(layer: BetterTransformerBaseLayer) -> None:
    """A wrapper (LoRA, quantized Linear) the adapter did not declare would be read through its
    ``.weight`` and silently dropped: refuse, naming it (an adapter written for plugin API 1.0)."""
    declared = {id(m) for modules in layer._bt_calls.values() for m in modules}
    for path, module in layer._bt_original_layer.named_modules():
        if id(module) in declared or not is_wrapper(module):
            continue
        if any(id(m) in declared for m in _ancestors(layer._bt_original_layer, path)):
            continue
        raise UnsupportedModelError(
            f"{layer._bt_path}.{path} is a {type(module).__module__}.{type(module).__qualname__}, which "
            f"{type(layer).__name__} reads as a plain linear (its adapter does not declare it with use_linears), "
            "so its extra computation would be dropped. Merge the wrapper first (for PEFT: "
            "model.merge_and_unload()), or upgrade the plugin to one that declares its linears."
        )


def _ancestors(root: nn.Module, path: str) -> list[nn.Module]:
    parts = path.split(".") if path else []
    return [root.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]


def kernel_blocker(layer: BetterTransformerBaseLayer) -> str | None:
    """Why ``torch._transformer_encoder_layer_fwd`` cannot compute this layer, or None when it can."""
    if layer._bt_calls:
        return f"its {', '.join(sorted(layer._bt_calls))} are wrapped modules (adapters, quantized) to call"
    if layer.activation not in KERNEL_ACTIVATIONS:
        return f"the kernel does not compute activation {layer.activation!r}"
    if layer.norm1_kind != "layer" or layer.norm2_kind != "layer":
        return "the kernel computes only LayerNorm"
    if any(getattr(layer, name, None) is None for name in ("norm1_weight", "norm2_weight")):
        return "a norm has no weight"
    if layer.norm1_eps != layer.norm2_eps:
        return "the two norms have different epsilons, and the kernel takes one"
    if layer.gated_half or layer.rotary or layer.attention_window is not None:
        return "the layer has a gated feed-forward, rotary positions or an attention window"
    head_dim = layer.attention_head_dim
    if (layer.num_kv_heads or layer.num_heads) != layer.num_heads or head_dim * int(layer.num_heads) != layer.embed_dim:
        return "the attention is not multi-head over the whole hidden size"
    if layer.score_scale is not None and not math.isclose(layer.score_scale, head_dim**-0.5, rel_tol=0, abs_tol=0):
        return f"the attention scores are scaled by {layer.score_scale}"
    if int(layer.num_heads) % 2 == 1:  # type: ignore[arg-type]
        return "the head count is odd, which PyTorch's fast path does not take"
    return None

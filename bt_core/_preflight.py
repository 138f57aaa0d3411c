"""Refusals that must happen before the first layer is swapped: what around a model bt cannot keep exact.

Each names what it found, where, and what to do instead, and leaves the model untouched.
"""

from __future__ import annotations

from torch import nn

from .errors import UnsupportedModelError

#: transformers attention implementations whose layers receive a mask bt reads.
_READABLE_ATTENTION = (None, "eager", "sdpa")


def preflight(root: nn.Module) -> None:
    """Refuse models whose weights are not where the conversion would read them."""
    for name, module in root.named_modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None:
            raise UnsupportedModelError(
                f"{name or type(root).__name__} carries an accelerate hook ({type(hook).__name__}: cpu_offload, "
                "disk_offload or a device_map dispatch), which moves weights in and out at call time; converting "
                "would fuse weights the hook no longer manages. Convert first, then offload: "
                "`model = BetterTransformer.transform(model)` before `cpu_offload(model, ...)` or dispatch_model "
                "(or load the model without device_map/offloading)."
            )
    for kind, named in (("parameter", root.named_parameters()), ("buffer", root.named_buffers())):
        for name, tensor in named:
            if tensor.is_meta:
                raise UnsupportedModelError(
                    f"{kind} {name} is on the meta device (a model built under torch.device('meta') or "
                    "init_empty_weights, or offloaded): it holds no values to convert. Load or materialise the "
                    "weights first (e.g. from_pretrained without device_map, or model.to_empty(device=...) and "
                    "load_state_dict), then convert."
                )


def check_attention_implementation(owner: nn.Module, where: str) -> None:
    """Refuse attention implementations whose layer masks bt cannot read (flex_attention's BlockMask)."""
    config = getattr(owner, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation in _READABLE_ATTENTION:
        return
    raise UnsupportedModelError(
        f"{where or type(owner).__name__} ({type(owner).__name__}) uses attn_implementation={implementation!r}, "
        "whose layers receive a mask bt cannot read (flex_attention hands them a BlockMask); bt converts "
        "models using 'eager' or 'sdpa'. Switch first: `model.set_attn_implementation(\"sdpa\")` (or load with "
        'attn_implementation="sdpa"), then convert.'
    )

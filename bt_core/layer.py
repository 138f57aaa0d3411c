"""The fused-layer contract every adapter fulfils.

An adapter subclasses :class:`BetterTransformerBaseLayer`, is constructed as
``Adapter(original_layer, config)``, and fills in the fused attributes listed in
``FUSED_PARAMETERS`` (weights, biases, norms) and the scalars (``num_heads``, ``embed_dim``,
``norm1_eps``, ``norm2_eps``, ``activation``, ``norm_first``). The base class checks them, picks the
execution strategy on every call, and knows how to give the original layer back bit for bit.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ._activations import ACTIVATIONS, KERNEL_ACTIVATIONS
from ._masks import add_causal
from .errors import LayerValidationError, UnsupportedModelError

__all__ = ["FUSED_PARAMETERS", "BetterTransformerBaseLayer", "LayerCall", "find_submodule"]

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

_warned: set[tuple[str, str]] = set()


@dataclass
class LayerCall:
    """One call of an encoder layer, read from whatever arguments the model's encoder passes."""

    hidden_states: Tensor
    attention_mask: Tensor | None = None
    head_mask: Tensor | None = None
    output_attentions: bool = False


class AttentionProbe(nn.Module):
    """A parameter-free module the reference path calls with the attention probabilities.

    transformers records ``output_attentions`` with forward hooks on attention modules; a converted
    layer has none, so the conversion hooks this probe instead.
    """

    def forward(self, context: Tensor, probabilities: Tensor) -> tuple[Tensor, Tensor]:
        return context, probabilities

    def __getstate__(self) -> dict[str, Any]:
        from ._hf_compat import without_capture_hooks

        return without_capture_hooks(self.__dict__)


class BetterTransformerBaseLayer(nn.Module):
    """Base class of every converted encoder layer.

    Subclasses set the fused attributes in ``__init__`` after calling ``super().__init__``:
    assign the original ``nn.Parameter`` where the kernel takes it as it is (it is shared, not
    copied), ``self.fuse(q, k, v)`` for the packed input projection, ``self.zeros(n, like=...)`` for a
    bias the original layer lacks, and ``self.derive(tensor, *sources)`` for a tensor computed from
    others (e.g. a folded scale); derived tensors' sources are kept aside so ``reverse`` is exact.
    Look weights up with :func:`find_submodule`, listing every name transformers has used.
    """

    #: Whether the installed transformers' encoder expects a tuple from this layer, not a tensor.
    returns_tuple: ClassVar[bool] = False
    #: Turned on by transformers' ``model.gradient_checkpointing_enable()``, like its own layers.
    gradient_checkpointing: bool = False
    #: Set when the model's encoder reads each layer's output itself (records hidden states in its own
    #: loop, adds embeddings between layers): every call then hands back the padded batch, instead of
    #: the nested or packed tokens that otherwise travel from the first converted layer to the last.
    pads_every_output: ClassVar[bool] = False
    #: Set when something after the layers reads outputs at padded positions (SigLIP's text pooler
    #: reads the last position): padded batches then run ``dense``, which computes every position as
    #: the original does, instead of skipping padding.
    reads_padded_positions: ClassVar[bool] = False

    in_proj_weight: nn.Parameter
    in_proj_bias: nn.Parameter
    out_proj_weight: nn.Parameter
    out_proj_bias: nn.Parameter
    linear1_weight: nn.Parameter
    linear1_bias: nn.Parameter
    linear2_weight: nn.Parameter
    linear2_bias: nn.Parameter
    norm1_weight: nn.Parameter
    norm1_bias: nn.Parameter
    norm2_weight: nn.Parameter
    norm2_bias: nn.Parameter

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__()
        # Kept out of the module tree on purpose: registering it would count its parameters twice.
        self.__dict__["_bt_original_layer"] = layer
        self.__dict__["_bt_fused_sources"] = {}
        self.__dict__["_bt_derived_sources"] = set()
        self.__dict__["_bt_derived"] = {}
        self.__dict__["_bt_restore_plan"] = None
        self.config = config
        self.num_heads: int | None = None
        self.embed_dim: int | None = None
        self.norm1_eps: float | None = None
        self.norm2_eps: float | None = None
        self.activation: str = "gelu"
        self.norm_first: bool = False
        #: Regularisation, applied by the reference path in training mode: dropout on the attention
        #: probabilities; dropout on each residual branch's output (``hidden_dropout`` for both unless
        #: ``attention_output_dropout``/``feed_forward_dropout`` say otherwise, e.g. 0.0 for a branch
        #: the original leaves alone); stochastic depth (``drop_path``) on each branch, per sample.
        self.attention_dropout: float = 0.0
        self.hidden_dropout: float = 0.0
        self.attention_output_dropout: float | None = None
        self.feed_forward_dropout: float | None = None
        self.drop_path: float = 0.0
        #: Position in the encoder's layer list; set by the conversion.
        self.is_first_layer = True
        self.is_last_layer = True
        self.bt_layer_name = type(layer).__name__
        self.attention_probe = AttentionProbe()
        self.__dict__["_bt_stack"] = None

    # -- helpers for adapters ------------------------------------------------------------------

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

    def branch_dropout(self, branch: str) -> float:
        """The dropout probability on the output of ``branch`` (``"attention"`` or ``"feed_forward"``)."""
        specific = self.attention_output_dropout if branch == "attention" else self.feed_forward_dropout
        return self.hidden_dropout if specific is None else specific

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        """Read the mask and flags from the encoder's call. Override when the encoder passes them differently.

        ``is_causal=True`` (how transformers' SDPA path marks a causal layer) is folded into the mask.
        """
        mask = args[0] if args else kwargs.get("attention_mask")
        if kwargs.get("is_causal") and not hidden_states.is_nested:
            mask = add_causal(mask, hidden_states.shape[1], hidden_states.device)
        return LayerCall(
            hidden_states=hidden_states,
            attention_mask=mask,
            head_mask=kwargs.get("head_mask"),
            output_attentions=bool(kwargs.get("output_attentions", False)),
        )

    def format_output(self, hidden_states: Tensor, attentions: Tensor | None, call: LayerCall) -> Any:
        """Return what the installed transformers' encoder expects of the original layer."""
        if not self.returns_tuple:
            return hidden_states
        return (hidden_states, attentions) if call.output_attentions else (hidden_states,)

    # -- the contract ---------------------------------------------------------------------------

    @property
    def kernel_computes_activation(self) -> bool:
        """Whether ``torch._transformer_encoder_layer_fwd`` computes this layer's activation exactly."""
        return self.activation in KERNEL_ACTIVATIONS

    def validate_bettertransformer(self) -> None:
        """Refuse, naming the layer, attribute and value, anything the fused math would get wrong."""
        where = f"{type(self).__name__} (converting {self.bt_layer_name})"
        for name in (*FUSED_PARAMETERS, "num_heads", "embed_dim", "norm1_eps", "norm2_eps"):
            if getattr(self, name, None) is None:
                raise LayerValidationError(f"{where}: attribute `{name}` was not set; the adapter must assign it.")
        embed_dim, num_heads = int(self.embed_dim), int(self.num_heads)  # type: ignore[arg-type]
        if num_heads <= 0 or embed_dim % num_heads != 0:
            raise LayerValidationError(
                f"{where}: embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                "the fused attention splits the hidden size evenly across heads."
            )
        ffn = self.linear1_weight.shape[0]
        expected = {
            "in_proj_weight": (3 * embed_dim, embed_dim),
            "in_proj_bias": (3 * embed_dim,),
            "out_proj_weight": (embed_dim, embed_dim),
            "out_proj_bias": (embed_dim,),
            "linear1_weight": (ffn, embed_dim),
            "linear1_bias": (ffn,),
            "linear2_weight": (embed_dim, ffn),
            "linear2_bias": (embed_dim,),
            "norm1_weight": (embed_dim,),
            "norm1_bias": (embed_dim,),
            "norm2_weight": (embed_dim,),
            "norm2_bias": (embed_dim,),
        }
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise LayerValidationError(
                    f"{where}: `{name}` has shape {actual}, expected {shape} for embed_dim={embed_dim} "
                    f"and a feed-forward size of {ffn}."
                )
        if self.norm1_eps != self.norm2_eps:
            raise LayerValidationError(
                f"{where}: norm1_eps={self.norm1_eps} differs from norm2_eps={self.norm2_eps}; the fused "
                "kernel takes one epsilon for both layer norms, so this layer cannot be converted exactly."
            )
        if self.activation not in ACTIVATIONS:
            raise LayerValidationError(
                f"{where}: activation {self.activation!r} is not one bt computes exactly; "
                f"supported: {', '.join(sorted(ACTIVATIONS))}."
            )
        dtypes = {getattr(self, name).dtype for name in FUSED_PARAMETERS}
        if len(dtypes) != 1:
            raise LayerValidationError(
                f"{where}: the fused parameters mix dtypes {sorted(map(str, dtypes))}; cast the model "
                "to one dtype (e.g. model.float()) before converting."
            )

    def forward_checker(self, call: LayerCall) -> str | None:
        """Why this call must take the differentiable reference path, or None when a fast path may run."""
        from ._hf_compat import output_capture_requested

        if self.training:
            return "the module is in training mode"
        if torch.is_grad_enabled() and (
            call.hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            return "autograd is recording gradients (run inference under torch.inference_mode() for the fast path)"
        if call.output_attentions or output_capture_requested():
            return "attentions or hidden states were requested"
        if call.head_mask is not None:
            return "a head mask was given"
        if torch.is_autocast_enabled(call.hidden_states.device.type):
            return "autocast is enabled"
        return None

    def warn_once(self, reason: str) -> None:
        key = (type(self).__name__, reason)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"{type(self).__name__}: taking the reference path because {reason}; results are exact, only slower.",
                stacklevel=3,
            )

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        from ._engine import run_layer

        call = self.parse_call(hidden_states, args, kwargs)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Set by transformers' gradient_checkpointing_enable(): keep no activations, recompute them.
            def compute(hidden: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
                return run_layer(self, dataclasses.replace(call, hidden_states=hidden, attention_mask=mask))

            output, attentions = self._gradient_checkpointing_func(compute, call.hidden_states, call.attention_mask)
        else:
            output, attentions = run_layer(self, call)
        return self.format_output(output, attentions, call)

    def __getstate__(self) -> dict[str, Any]:
        # transformers' recording hooks are closures that pickle refuses; they are re-made on load.
        from ._hf_compat import without_capture_hooks

        return without_capture_hooks(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        from ._hf_compat import reinstall_output_capture

        super().__setstate__(state)
        reinstall_output_capture(self)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, activation={self.activation!r}, "
            f"norm_first={self.norm_first}, original={self.bt_layer_name}"
        )

    # -- giving the original back ---------------------------------------------------------------

    @property
    def original_layer(self) -> nn.Module:
        return self._bt_original_layer

    def _bt_plan_restore(self) -> None:
        """Record, per original parameter, where its value lives in this layer."""
        original = self._bt_original_layer
        names_by_id = {id(p): name for name, p in original.named_parameters(remove_duplicate=False)}
        shared: dict[str, str] = {}
        sliced: dict[str, tuple[str, int, int]] = {}
        derived: dict[str, tuple[list[str | None], Any]] = {}
        for attr in FUSED_PARAMETERS:
            value = getattr(self, attr)
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

    def _bt_release_original(self) -> None:
        """Free the original copies of sliced parameters; ``reverse`` rebuilds them from the fused ones."""
        _, sliced, derived = self._bt_restore_plan
        for name in sliced:
            owner, _, pname = _owner(self._bt_original_layer, name)
            old = getattr(owner, pname)
            setattr(owner, pname, nn.Parameter(old.detach().to("meta"), requires_grad=old.requires_grad))
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter.
        self.__dict__["_bt_derived_versions"] = {attr: getattr(self, attr)._version for attr in derived}

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
                owner, _, pname = _owner(original, name)
                old = getattr(owner, pname)
                setattr(owner, pname, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
        for name, attr in shared.items():
            owner, _, pname = _owner(original, name)
            setattr(owner, pname, getattr(self, attr))
        for name, (attr, start, end) in sliced.items():
            owner, _, pname = _owner(original, name)
            old = getattr(owner, pname)
            value = getattr(self, attr)[start:end].detach().clone()
            setattr(owner, pname, nn.Parameter(value, requires_grad=old.requires_grad))
        reference = self.in_proj_weight
        original.to(device=reference.device, dtype=reference.dtype)
        original.train(self.training)
        return original


def find_submodule(layer: nn.Module, names: Sequence[str], what: str, *, plugin: str = "the plugin") -> nn.Module:
    """The first of ``names`` (dotted paths) that exists under ``layer``: where adapters find weights.

    transformers renames modules between releases, so adapters list every known name, newest first.
    When none exists this raises :class:`UnsupportedModelError` naming the layer class, ``what`` was
    looked for and every name tried, so a rename fails loudly instead of converting the wrong thing.
    """
    for name in names:
        try:
            return layer.get_submodule(name)
        except AttributeError:
            continue
    children = ", ".join(name for name, _ in layer.named_children()) or "none"
    raise UnsupportedModelError(
        f"{type(layer).__name__}: cannot find its {what}; tried {', '.join(repr(n) for n in names)} "
        f"(the layer's children are: {children}). The installed transformers may have renamed this "
        f"layer's weights: upgrade {plugin}, or install a transformers release it supports."
    )


def _owner(root: nn.Module, qualified_name: str) -> tuple[nn.Module, str, str]:
    module_path, _, pname = qualified_name.rpartition(".")
    return (root.get_submodule(module_path) if module_path else root), module_path, pname

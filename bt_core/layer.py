"""The layer contract every adapter fulfils.

An adapter subclasses :class:`BetterTransformerBaseLayer`, is constructed as
``Adapter(original_layer, config)``, and *declares* the layer's parts; the base class checks them,
picks the execution strategy on every call, and gives the original layer back bit for bit.

A layer is: projections (q/k/v, output, a feed-forward of two linears, gated or not), a position
scheme on q/k (none, or rotary from cos/sin the model hands the layer), an additive score bias (none,
or a relative position bias the call carries), a score scale, an attention window, grouped key/value
heads, and two norms (LayerNorm with or without bias, RMSNorm, or none) before or after each branch.

- Plugin API 1.0: assign the fused attributes in ``FUSED_PARAMETERS`` (weights as shared
  ``nn.Parameter``, ``self.fuse(q, k, v)``, ``self.zeros(n, like=...)``, ``self.derive(...)``) and the
  scalars ``num_heads``, ``embed_dim``, ``norm1_eps``, ``norm2_eps``, ``activation``, ``norm_first``.
- Plugin API 1.1 adds: :meth:`use_linears` and :meth:`use_norms`, which take the layer's own modules
  (a PEFT LoRA layer or a quantized Linear in a linear's place is then called, not read), and the
  declarations ``head_dim``, ``num_kv_heads``, ``score_scale``, ``rotary``, ``attention_window``,
  ``gated_half``, ``norm1_kind``/``norm2_kind``; ``parse_call`` may fill ``LayerCall.rotary`` and
  ``LayerCall.score_bias``. The fused kernel runs only on layers that are exactly its shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import _validate
from ._activations import KERNEL_ACTIVATIONS, check_activation
from ._autocast_weights import CACHE_ATTRIBUTE
from ._declare import DeclaringLayer
from ._engine import run_layer
from ._fused import clamp_float16
from ._hf_compat import AttentionProbe, output_capture_requested, reinstall_output_capture, without_capture_hooks
from ._masks import add_causal
from ._math import project_qkv
from ._restore import FUSED_PARAMETERS
from .errors import UnsupportedModelError

__all__ = [
    "FUSED_PARAMETERS",
    "BetterTransformerBaseLayer",
    "LayerCall",
    "check_activation",
    "clamp_float16",
    "find_submodule",
]

_warned: set[tuple[str, str]] = set()
_building: ContextVar[tuple[str, str] | None] = ContextVar("bt_building", default=None)


@contextlib.contextmanager
def building(path: str, description: str) -> Iterator[None]:
    """Name the layer an adapter is being built for (its path in the model, and a description with its
    class), so declarations can name it in their errors."""
    token = _building.set((path, description))
    try:
        yield
    finally:
        _building.reset(token)


@dataclass
class LayerCall:
    """One call of an encoder layer, read from whatever arguments the model's encoder passes.

    ``rotary``: ``(cos, sin)`` for the layer's positions, ``(seq, dim)`` or ``(batch, seq, dim)`` (a head
    axis of size 1 is allowed), applied to the first ``dim`` channels of every q and k head (API 1.1).
    ``score_bias``: an additive float bias broadcastable to ``(batch, heads, seq, seq)``, without the
    padding mask, which stays in ``attention_mask`` (API 1.1).
    """

    hidden_states: Tensor
    attention_mask: Tensor | None = None
    head_mask: Tensor | None = None
    output_attentions: bool = False
    rotary: tuple[Tensor, Tensor] | None = None
    score_bias: Tensor | None = None


class BetterTransformerBaseLayer(DeclaringLayer):
    """Base class of every converted encoder layer. Adapters declare parts in ``__init__``."""

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
    #: the original does. (Left-padded batches always do: heads read position 0.)
    reads_padded_positions: ClassVar[bool] = False
    #: Set when the original drops out ``(seq, batch, ...)`` tensors (FSMT keeps its hidden states time
    #: first): the reference path then draws its dropout masks in that order, so one seed drops the same elements.
    dropout_time_first: ClassVar[bool] = False

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__()
        # Kept out of the module tree on purpose: registering it would count its parameters twice.
        for name, value in (("_bt_original_layer", layer), ("_bt_fused_sources", {}), ("_bt_derived_sources", set())):
            self.__dict__[name] = value
        for name, value in (("_bt_derived", {}), ("_bt_restore_plan", None), ("_bt_absent", set()), ("_bt_calls", {})):
            self.__dict__[name] = value
        self.__dict__["_bt_whole_input"] = False  # a wrapped linear must see the padded batch
        self.config = config
        self.num_heads: int | None = None
        self.embed_dim: int | None = None
        self.norm1_eps: float | None = None
        self.norm2_eps: float | None = None
        self.activation: str = "gelu"
        self.norm_first: bool = False
        # -- declared parts (plugin API 1.1); the defaults describe the 1.0 layer ----------------------
        #: Width of one attention head; None: ``embed_dim // num_heads``.
        self.head_dim: int | None = None
        #: Key/value heads for grouped-query attention; None: ``num_heads``.
        self.num_kv_heads: int | None = None
        #: Multiplier of q.k; None: ``1/sqrt(head_dim)`` (T5 declares 1.0).
        self.score_scale: float | None = None
        #: Rotary positions on q and k from ``LayerCall.rotary``: ``"half"`` (rotate_half, as llama,
        #: ModernBERT) or ``"interleaved"`` (pairs of channels, as RoFormer); None: no rotary.
        self.rotary: str | None = None
        #: A query attends only to keys at most this many positions away (local attention); None: all.
        self.attention_window: int | None = None
        #: Gated feed-forward: which half of ``linear1``'s output goes through the activation
        #: (``"first"`` or ``"second"``); the other half multiplies it. None: ``linear2(act(linear1(x)))``.
        self.gated_half: str | None = None
        #: ``"layer"`` (LayerNorm), ``"rms"`` (llama-family RMSNorm, in float32), ``"t5_rms"`` (T5's: float32
        #: statistics, input scaled in its own precision) or ``"none"`` (identity); set by ``use_norms``.
        self.norm1_kind: str = "layer"
        self.norm2_kind: str = "layer"
        #: Regularisation, applied by the reference path in training mode: dropout on the attention
        #: probabilities; dropout on each residual branch's output (``hidden_dropout`` for both unless
        #: ``attention_output_dropout``/``feed_forward_dropout`` say otherwise, e.g. 0.0 for a branch
        #: the original leaves alone); stochastic depth (``drop_path``) on each branch, per sample.
        self.attention_dropout: float = 0.0
        self.hidden_dropout: float = 0.0
        self.attention_output_dropout: float | None = None
        self.feed_forward_dropout: float | None = None
        self.drop_path: float = 0.0
        #: Dropout inside the feed-forward, on the activated (gated) inner tensor before ``linear2`` (API 1.1).
        self.feed_forward_inner_dropout: float = 0.0
        #: Position in the encoder's layer list; set by the conversion.
        self.is_first_layer = True
        self.is_last_layer = True
        path, self.bt_layer_name = _building.get() or (type(layer).__name__, type(layer).__name__)
        self.__dict__["_bt_path"] = path  # where the layer sits in the model, for messages
        self.attention_probe = AttentionProbe()
        #: Wrapped modules in a linear's place, called by the strategies (registered, so trainable).
        self.wrapped = nn.ModuleDict()

    @property
    def attention_head_dim(self) -> int:
        return int(self.head_dim or int(self.embed_dim) // int(self.num_heads))  # type: ignore[arg-type]

    def project_qkv(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q ``(..., heads, head_dim)`` and k, v ``(..., kv_heads, head_dim)`` of ``tokens`` ``(..., hidden)``,
        projected as every strategy projects them (for an adapter that must return attention scores)."""
        return project_qkv(self, tokens)

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

    @classmethod
    def converts(cls, layer: nn.Module, config: Any) -> bool:
        """Whether this adapter converts ``layer``; False leaves it as it is (plugin API 1.1).

        For a layer class that also serves where bt cannot be exact, such as the decoder blocks of a
        seq2seq model that share the encoder's class: those stay the model's own, the rest convert.
        """
        return True

    # -- the contract -----------------------------------------------------------------------------

    @property
    def kernel_computes_activation(self) -> bool:
        """Whether ``torch._transformer_encoder_layer_fwd`` computes this layer's activation exactly."""
        return self.activation in KERNEL_ACTIVATIONS

    def validate_bettertransformer(self) -> None:
        """Refuse, naming the layer, attribute and value, anything the strategies would compute wrongly."""
        _validate.validate(self)

    def forward_checker(self, call: LayerCall) -> str | None:
        """Why this call must take the differentiable reference path, or None when a fast path may run."""
        if self.training:
            return "the module is in training mode"
        if torch.is_grad_enabled() and (
            call.hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            return "autograd is recording gradients (run inference under torch.inference_mode() for the fast path)"
        if call.output_attentions or output_capture_requested("attentions"):
            return "attention probabilities were requested"
        if call.head_mask is not None:
            return "a head mask was given"
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
        # transformers' recording hooks are closures that pickle refuses; they are re-made on load. The
        # autocast weight casts are a cache in oneDNN's opaque layout (no storage to save): remade on use.
        state = dict(without_capture_hooks(self.__dict__))
        state.pop(CACHE_ATTRIBUTE, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        reinstall_output_capture(self)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, activation={self.activation!r}, "
            f"norm_first={self.norm_first}, original={self.bt_layer_name}"
        )

    @property
    def original_layer(self) -> nn.Module:
        return self._bt_original_layer


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

"""Adapters for the encoder layers of BART and its seq2seq relatives.

Every layer here is one arithmetic: q/k/v/out projections with biases (scores scaled by
``head_dim ** -0.5``), ``fc2(act(fc1(x)))`` and two LayerNorms, post-norm (bart, plbart, marian,
blenderbot-small) or pre-norm (mbart, m2m_100/NLLB, pegasus, blenderbot, bigbird_pegasus with full
attention). Embedding scale, positions, the embedding norm and the pre-norm encoders' final norm live
outside the layer, in the encoder, and stay the model's own. The decoder layers are other classes
(``BartDecoderLayer``, ...): a ``...ForConditionalGeneration`` model converts its encoder only, and its
decoder, cache and cross-attention stay transformers' own.

In transformers 5.10 and 5.24 alike these encoders hand each layer the mask ``create_bidirectional_mask``
builds (4-D additive float for eager, 4-D bool or None for sdpa) as the second positional argument,
record hidden states and attentions with hooks, and take a tensor back.

Dropout as the originals place it (the reference path in training): ``attention_dropout`` on the
probabilities, ``dropout`` on each branch's output, ``activation_dropout`` after the activation.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, UnsupportedModelError
from bt_core.layer import LayerCall, check_activation, clamp_float16, find_submodule

__all__ = [
    "BartEncoderLayerAdapter",
    "BigBirdPegasusEncoderLayerAdapter",
    "MBartEncoderLayerAdapter",
    "Seq2SeqEncoderLayerAdapter",
]

_PLUGIN = "bt-plugins-encoders"


class Seq2SeqEncoderLayerAdapter(BetterTransformerBaseLayer):
    """An encoder layer laid out as ``BartEncoderLayer``: ``self_attn.{q,k,v,out}_proj``, ``fc1``, ``fc2``,
    ``self_attn_layer_norm``, ``final_layer_norm``. Subclasses set the norm placement and the clamp."""

    #: Pre-norm (``normalize_before``): ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``.
    NORM_FIRST: ClassVar[bool] = False
    #: Whether the layer clamps every float16 output (pre-norm), or only after an overflow (post-norm).
    CLAMPS_ALWAYS: ClassVar[bool] = False
    #: (query, key, value, output) paths under the layer.
    ATTENTION_PATHS: ClassVar[tuple[str, str, str, str]] = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
    )
    #: Whether the layer drops out the activated feed-forward (``activation_dropout``) before ``fc2``.
    DROPS_ACTIVATIONS: ClassVar[bool] = True

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        get = lambda path: find_submodule(layer, (path,), path, plugin=_PLUGIN)  # noqa: E731
        q, k, v, out = (get(path) for path in self.ATTENTION_PATHS)
        self.use_linears(in_proj=(q, k, v), out_proj=out, linear1=get("fc1"), linear2=get("fc2"))
        self.use_norms(norm1=get("self_attn_layer_norm"), norm2=get("final_layer_norm"))
        self.norm_first = self.NORM_FIRST
        self.num_heads, self.embed_dim = self.attention_shape(layer)
        self.activation = check_activation(
            layer.activation_fn, getattr(config, "activation_function", None), self.bt_layer_name, "activation_function"
        )
        self.attention_dropout = self.attention_dropout_of(layer)
        self.hidden_dropout = float(layer.dropout)
        self.feed_forward_inner_dropout = float(layer.activation_dropout) if self.DROPS_ACTIVATIONS else 0.0

    def attention_shape(self, layer: nn.Module) -> tuple[int, int]:
        """``(num_heads, embed_dim)``, after checking the scores are scaled by ``head_dim ** -0.5``."""
        attention = layer.self_attn
        heads, width = int(attention.num_heads), int(attention.embed_dim)
        if attention.scaling != (width // heads) ** -0.5:
            raise UnsupportedModelError(
                f"{self.bt_layer_name}: the attention scales its scores by {attention.scaling}, not head_dim**-0.5 "
                f"({(width // heads) ** -0.5}); bt cannot compute this layer. Keep the model unconverted."
            )
        return heads, width

    def attention_dropout_of(self, layer: nn.Module) -> float:
        return float(layer.self_attn.dropout)

    def format_output(self, hidden_states: Tensor, attentions: Tensor | None, call: LayerCall) -> Any:
        return clamp_float16(hidden_states, always=self.CLAMPS_ALWAYS)


class BartEncoderLayerAdapter(Seq2SeqEncoderLayerAdapter):
    """Post-norm encoder layers: ``BartEncoderLayer``, ``PLBartEncoderLayer``, ``MarianEncoderLayer``,
    ``BlenderbotSmallEncoderLayer``; a float16 output is clamped only after an overflow."""


class MBartEncoderLayerAdapter(Seq2SeqEncoderLayerAdapter):
    """Pre-norm encoder layers: ``MBartEncoderLayer``, ``M2M100EncoderLayer`` (NLLB), ``PegasusEncoderLayer``,
    ``BlenderbotEncoderLayer``; every float16 output is clamped to ``max - 1000``."""

    NORM_FIRST: ClassVar[bool] = True
    CLAMPS_ALWAYS: ClassVar[bool] = True


class BigBirdPegasusEncoderLayerAdapter(Seq2SeqEncoderLayerAdapter):
    """``BigBirdPegasusEncoderLayer`` with full attention (``attention_type="original_full"``): pre-norm,
    ``self_attn.self.{query,key,value}`` and ``self_attn.output``, no dropout after the activation, a float16
    output clamped only after an overflow. Block-sparse attention is refused: its random and windowed
    blocks are not full attention."""

    NORM_FIRST: ClassVar[bool] = True
    ATTENTION_PATHS: ClassVar[tuple[str, str, str, str]] = (
        "self_attn.self.query",
        "self_attn.self.key",
        "self_attn.self.value",
        "self_attn.output",
    )
    DROPS_ACTIVATIONS: ClassVar[bool] = False  # the layer holds activation_dropout but never applies it

    def __init__(self, layer: nn.Module, config: Any) -> None:
        kind = getattr(layer, "attention_type", None)
        if kind != "original_full":
            raise UnsupportedModelError(
                f"{type(layer).__name__}: attention_type={kind!r}; BigBird's block-sparse attention (a sliding "
                "window, global and random blocks) is not full attention, so bt cannot compute it exactly. "
                "Convert with full attention only: model.get_encoder().set_attention_type('original_full') (or "
                "config.attention_type='original_full'), if that is how you run the model."
            )
        super().__init__(layer, config)

    def attention_shape(self, layer: nn.Module) -> tuple[int, int]:
        attention = layer.self_attn.self
        heads, head_dim = int(attention.num_attention_heads), int(attention.attention_head_size)
        return heads, heads * head_dim  # BigBird divides scores by sqrt(head_dim): the default scale

    def attention_dropout_of(self, layer: nn.Module) -> float:
        return float(layer.self_attn.self.dropout.p)

    def set_attention_type(self, value: str) -> None:
        """The encoder calls this to switch attention; a converted layer keeps full attention only."""
        if value != "original_full":
            raise UnsupportedModelError(
                f"{self.bt_layer_name}: cannot switch a converted layer to attention_type={value!r} (bt computes "
                "full attention only). Call BetterTransformer.reverse(model) first, then switch."
            )

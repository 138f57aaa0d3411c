"""Adapters for BERT-family encoder layers.

Every layer here is the same arithmetic (self-attention with q/k/v/out linears, a two-linear
feed-forward, two layer norms); the families differ only in where the weights live, post- or
pre-norm, and how their encoder calls the layer. So there is one adapter that reads weights from a
table of attribute paths (:class:`EncoderLayerAdapter`) and a handful of subclasses that only
change that table, the config field names, or the call convention.

Paths were checked against transformers 5.10.2 and 5.24.0, which use the same names for every
layer below. Each role still takes a tuple of candidate paths, so a release that renames a module
only needs a new candidate, and a miss raises an error naming the layer and every path tried.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, UnsupportedModelError
from bt_core.layer import LayerCall, find_submodule

__all__ = [
    "AlbertLayerAdapter",
    "BertLayerAdapter",
    "DistilBertLayerAdapter",
    "EncoderLayerAdapter",
    "TupleBertLayerAdapter",
    "XLMRobertaXLLayerAdapter",
]

_MISSING = object()


def _config_value(config: Any, names: tuple[str, ...], default: Any = _MISSING) -> Any:
    for name in names:
        value = getattr(config, name, _MISSING)
        if value is not _MISSING and value is not None:
            return value
    if default is not _MISSING:
        return default
    raise UnsupportedModelError(
        f"{type(config).__name__} has none of the fields {', '.join(names)}; bt-plugins-encoders cannot "
        "read this configuration. Upgrade the plugin, or report the config class to its authors."
    )


class EncoderLayerAdapter(BetterTransformerBaseLayer):
    """An encoder layer described by where its weights are and which config fields hold its scalars.

    Subclasses set ``PATHS`` (role -> candidate submodule paths, relative to the layer) and, when
    their config names differ from BERT's, the ``*_FIELDS`` tuples.
    """

    #: role -> candidate dotted paths of an ``nn.Linear`` (or ``nn.LayerNorm`` for the norms).
    PATHS: ClassVar[dict[str, tuple[str, ...]]] = {}
    NORM_FIRST: ClassVar[bool] = False
    HEADS_FIELDS: ClassVar[tuple[str, ...]] = ("num_attention_heads",)
    HIDDEN_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_size",)
    ACTIVATION_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_act",)
    ATTENTION_DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ("attention_probs_dropout_prob",)
    HIDDEN_DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_dropout_prob",)
    #: The residual branch (``"attention"`` or ``"feed_forward"``) the original layer does *not* apply
    #: ``hidden_dropout`` to, if any; the reference path then leaves that branch alone in training too.
    UNDROPPED_BRANCH: ClassVar[str | None] = None
    #: Candidate paths of the layer's activation module, checked against the config's name.
    ACTIVATION_PATHS: ClassVar[tuple[str, ...]] = ("intermediate.intermediate_act_fn",)

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        self.check_config(layer, config)
        get = lambda role: find_submodule(layer, self.PATHS[role], role, plugin="bt-plugins-encoders")  # noqa: E731
        q, k, v = get("query"), get("key"), get("value")
        out, ffn_in, ffn_out = get("attention output"), get("feed-forward input"), get("feed-forward output")
        norm1, norm2 = get("first layer norm"), get("second layer norm")

        # Modules, not weights: a PEFT LoRA layer or a quantized Linear in a linear's place is called.
        self.use_linears(in_proj=(q, k, v), out_proj=out, linear1=ffn_in, linear2=ffn_out)
        self.use_norms(norm1=norm1, norm2=norm2)
        self.norm_first = self.NORM_FIRST
        self.num_heads = int(_config_value(config, self.HEADS_FIELDS))
        self.embed_dim = int(_config_value(config, self.HIDDEN_FIELDS))
        self.activation = _config_value(config, self.ACTIVATION_FIELDS)
        self._check_activation(layer)
        self.attention_dropout = float(_config_value(config, self.ATTENTION_DROPOUT_FIELDS, 0.0))
        self.hidden_dropout = float(_config_value(config, self.HIDDEN_DROPOUT_FIELDS, 0.0))
        if self.UNDROPPED_BRANCH == "attention":
            self.attention_output_dropout = 0.0
        elif self.UNDROPPED_BRANCH == "feed_forward":
            self.feed_forward_dropout = 0.0

    # -- helpers ----------------------------------------------------------------------------------

    def _check_activation(self, layer: nn.Module) -> None:
        """Refuse when the layer's activation module is not the one the config names (e.g. the
        config was edited after the model was built): the declared activation would be wrong."""
        from transformers.activations import ACT2FN

        module = None
        for path in self.ACTIVATION_PATHS:
            try:
                module = layer.get_submodule(path)
                break
            except AttributeError:
                continue
        if module is None or not isinstance(self.activation, str) or self.activation not in ACT2FN:
            return  # bt_core's validation names an activation it cannot compute
        expected = type(ACT2FN[self.activation])
        if type(module) is not expected:
            raise UnsupportedModelError(
                f"{type(layer).__name__}: config.{self.ACTIVATION_FIELDS[0]}={self.activation!r} "
                f"({expected.__name__}), but the layer computes {type(module).__name__}; the config no "
                "longer describes the model (edited after it was built?). Rebuild the model from the "
                "config, or set the field back to the activation the layer uses."
            )

    def check_config(self, layer: nn.Module, config: Any) -> None:
        """Refuse configurations whose layer computes something the fused math does not."""
        name = type(config).__name__
        where = f"{type(layer).__name__} ({name})"
        position = getattr(config, "position_embedding_type", None)
        if position not in (None, "absolute"):
            raise UnsupportedModelError(
                f"{where}: config.position_embedding_type={position!r} asks for relative-position "
                "attention, which the fused encoder kernel cannot compute (its attention has no "
                "position term). Keep this model unconverted, or set position_embedding_type='absolute' "
                "only if the checkpoint was trained with absolute positions."
            )
        if getattr(config, "add_cross_attention", False):
            raise UnsupportedModelError(
                f"{where}: config.add_cross_attention=True adds cross-attention to every layer, which the "
                "fused encoder kernel does not compute. Convert the encoder only, or keep the decoder "
                "unconverted."
            )
        if getattr(config, "is_decoder", False):
            raise UnsupportedModelError(
                f"{where}: config.is_decoder=True makes the self-attention causal with a key/value cache, "
                "which the fused encoder kernel does not compute. Load the model with is_decoder=False "
                "(as an encoder) to convert it."
            )
        for field in self.ACTIVATION_FIELDS:
            act = getattr(config, field, None)
            if act is not None and not isinstance(act, str):
                raise UnsupportedModelError(
                    f"{where}: config.{field} is {act!r}, a callable; bt needs the activation's name "
                    "(e.g. 'gelu') to compute it exactly. Set config."
                    f"{field} to the transformers name of that activation."
                )


class BertLayerAdapter(EncoderLayerAdapter):
    """``BertLayer`` and its copies (RoBERTa, ELECTRA, ERNIE, LayoutLM, ...): post-norm, ``attention.self``."""

    PATHS: ClassVar[dict[str, tuple[str, ...]]] = {
        "query": ("attention.self.query",),
        "key": ("attention.self.key",),
        "value": ("attention.self.value",),
        "attention output": ("attention.output.dense",),
        "feed-forward input": ("intermediate.dense",),
        "feed-forward output": ("output.dense",),
        "first layer norm": ("attention.output.LayerNorm",),
        "second layer norm": ("output.LayerNorm",),
    }


class TupleBertLayerAdapter(BertLayerAdapter):
    """RemBERT and TAPAS: BERT's layout, but their encoders still pass ``output_attentions`` to the
    layer (positionally, as the 6th argument, in RemBERT), index a tuple from it, and collect
    ``output_hidden_states`` themselves between layers."""

    returns_tuple: ClassVar[bool] = True
    #: Position of ``output_attentions`` among the arguments after ``hidden_states``:
    #: (attention_mask, encoder_hidden_states, encoder_attention_mask, cache, output_attentions).
    OUTPUT_ATTENTIONS_ARG: ClassVar[int] = 4

    # These encoders record ``output_hidden_states`` themselves, between layers, where bt cannot see
    # it (no transformers output-capture hook, and the flag is not passed to the layer). A packed or
    # nested batch carried from layer to layer would land in the user's hidden states, so every layer
    # hands back the padded batch, as a last layer does.
    pads_every_output: ClassVar[bool] = True

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        call = super().parse_call(hidden_states, args, kwargs)
        if len(args) > self.OUTPUT_ATTENTIONS_ARG:
            call.output_attentions = bool(args[self.OUTPUT_ATTENTIONS_ARG])
        return call


class XLMRobertaXLLayerAdapter(BertLayerAdapter):
    """``XLMRobertaXLLayer``: BERT's attention and feed-forward, pre-norm."""

    NORM_FIRST: ClassVar[bool] = True
    UNDROPPED_BRANCH: ClassVar[str | None] = "feed_forward"
    PATHS: ClassVar[dict[str, tuple[str, ...]]] = {
        **BertLayerAdapter.PATHS,
        "first layer norm": ("attention.self_attn_layer_norm",),
        "second layer norm": ("LayerNorm",),
    }


class DistilBertLayerAdapter(EncoderLayerAdapter):
    """DistilBERT's ``TransformerBlock``: post-norm, ``q_lin``/``k_lin``/``v_lin``/``out_lin``, ``ffn.lin1/2``."""

    PATHS: ClassVar[dict[str, tuple[str, ...]]] = {
        "query": ("attention.q_lin",),
        "key": ("attention.k_lin",),
        "value": ("attention.v_lin",),
        "attention output": ("attention.out_lin",),
        "feed-forward input": ("ffn.lin1",),
        "feed-forward output": ("ffn.lin2",),
        "first layer norm": ("sa_layer_norm",),
        "second layer norm": ("output_layer_norm",),
    }
    HEADS_FIELDS: ClassVar[tuple[str, ...]] = ("n_heads", "num_attention_heads")
    HIDDEN_FIELDS: ClassVar[tuple[str, ...]] = ("dim", "hidden_size")
    ACTIVATION_FIELDS: ClassVar[tuple[str, ...]] = ("activation", "hidden_act")
    ATTENTION_DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ("attention_dropout",)
    HIDDEN_DROPOUT_FIELDS: ClassVar[tuple[str, ...]] = ("dropout",)
    UNDROPPED_BRANCH: ClassVar[str | None] = "attention"
    ACTIVATION_PATHS: ClassVar[tuple[str, ...]] = ("ffn.activation",)


class AlbertLayerAdapter(EncoderLayerAdapter):
    """``AlbertLayer``: post-norm; one instance is shared by every repeat of its layer group.

    The converted layer is shared the same way (the conversion replaces the one module), so its
    fused weights stay tied across repeats. ALBERT's default activation is ``gelu_new`` (tanh
    approximation), which the fused kernel does not compute; such layers run the exact ordinary-op
    strategies, and the kernel runs only for configs with ``hidden_act`` ``"gelu"`` or ``"relu"``.
    """

    UNDROPPED_BRANCH: ClassVar[str | None] = "feed_forward"  # AlbertLayer.dropout exists but is never applied
    ACTIVATION_PATHS: ClassVar[tuple[str, ...]] = ("activation",)
    PATHS: ClassVar[dict[str, tuple[str, ...]]] = {
        "query": ("attention.query",),
        "key": ("attention.key",),
        "value": ("attention.value",),
        "attention output": ("attention.dense",),
        "feed-forward input": ("ffn",),
        "feed-forward output": ("ffn_output",),
        "first layer norm": ("attention.LayerNorm",),
        "second layer norm": ("full_layer_layer_norm",),
    }

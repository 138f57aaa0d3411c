"""Adapters for speech encoder layers: the wav2vec2 family and the Whisper/Speech2Text encoders.

- ``Wav2Vec2EncoderLayer``, ``HubertEncoderLayer``, ``Data2VecAudioEncoderLayer``: post-norm,
  ``norm1(x + attn(x))`` then ``norm2(h + ff(h))``.
- ``Wav2Vec2EncoderLayerStableLayerNorm``, ``HubertEncoderLayerStableLayerNorm``: pre-norm ("stable
  layer norm"), as the large checkpoints use.
- ``WhisperEncoderLayer``, ``Speech2TextEncoderLayer``: pre-norm, no key bias (Whisper), a float16
  clamp after the feed-forward. Their decoder layers are other classes, so a seq2seq model converts its
  encoder only.

Masks: the wav2vec2-family models compute a frame mask from the sample mask
(``_get_feature_vector_attention_mask``) and hand the layers the 4-D mask transformers builds from it,
or none; Speech2Text does the same on subsampled filterbank frames; Whisper passes None. bt reads
whatever the layer receives, so a model that runs without a mask runs without one here too.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, UnsupportedModelError
from bt_core.layer import LayerCall, check_activation, clamp_float16
from bt_core.layer import find_submodule as _find_submodule

__all__ = ["LEGACY_CALLS", "SpeechEncoderLayerAdapter", "Wav2Vec2LayerAdapter", "Wav2Vec2StableLayerNormAdapter"]

_PLUGIN = "bt-plugins-audio"


def _legacy_call_convention() -> bool:
    """Whether the installed transformers' wav2vec2-family layers take ``output_attentions`` and return a
    tuple the encoder indexes, its encoder recording ``output_hidden_states`` in its own loop (5.10),
    rather than hooks recording both (5.2x)."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2EncoderLayer

    return "output_attentions" in inspect.signature(Wav2Vec2EncoderLayer.forward).parameters


LEGACY_CALLS = _legacy_call_convention()


def find_submodule(layer: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    """bt-core's weight lookup, naming this pack in its error."""
    return _find_submodule(layer, names, what, plugin=_PLUGIN)


def _dropout_p(module: Any) -> float:
    return float(module.p) if isinstance(module, nn.Dropout) else float(module or 0.0)


class Wav2Vec2LayerAdapter(BetterTransformerBaseLayer):
    """The post-norm layer of wav2vec2, HuBERT and data2vec-audio (``attention``, ``feed_forward``,
    ``layer_norm``, ``final_layer_norm``)."""

    NORM_FIRST: ClassVar[bool] = False
    # transformers 5.10: the layer returns ``(hidden_states, attentions?)`` and the encoder records
    # hidden states between layers, where bt cannot see it: every layer then hands back the padded batch.
    returns_tuple: ClassVar[bool] = LEGACY_CALLS
    pads_every_output: ClassVar[bool] = LEGACY_CALLS

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        attention = find_submodule(layer, ("attention",), "self-attention")
        feed_forward = find_submodule(layer, ("feed_forward",), "feed-forward")
        self.use_linears(
            in_proj=(
                find_submodule(layer, ("attention.q_proj",), "query projection"),
                find_submodule(layer, ("attention.k_proj",), "key projection"),
                find_submodule(layer, ("attention.v_proj",), "value projection"),
            ),
            out_proj=find_submodule(layer, ("attention.out_proj",), "attention output projection"),
            linear1=find_submodule(layer, ("feed_forward.intermediate_dense",), "feed-forward input"),
            linear2=find_submodule(layer, ("feed_forward.output_dense",), "feed-forward output"),
        )
        self.use_norms(
            norm1=find_submodule(layer, ("layer_norm",), "attention layer norm"),
            norm2=find_submodule(layer, ("final_layer_norm",), "feed-forward layer norm"),
        )
        self.num_heads = int(attention.num_heads)
        self.embed_dim = int(attention.embed_dim)
        self.norm_first = self.NORM_FIRST
        self.activation = check_activation(
            feed_forward.intermediate_act_fn, getattr(config, "hidden_act", None), self.bt_layer_name, "hidden_act"
        )
        # Dropout: on the probabilities, after the attention output (the layer's own), inside the
        # feed-forward after the activation, and on the feed-forward's output.
        self.attention_dropout = float(attention.dropout)
        self.attention_output_dropout = _dropout_p(layer.dropout)
        self.feed_forward_inner_dropout = _dropout_p(feed_forward.intermediate_dropout)
        self.feed_forward_dropout = _dropout_p(feed_forward.output_dropout)
        if getattr(config, "add_adapter", False):
            # Wav2Vec2Adapter's strided convolutions after the encoder read frames past a row's end, whose
            # hidden states the original computes: padded batches then run dense, every frame computed.
            self.reads_padded_positions = True  # type: ignore[misc]


class Wav2Vec2StableLayerNormAdapter(Wav2Vec2LayerAdapter):
    """The pre-norm ("stable layer norm") layer of wav2vec2 and HuBERT. Refuses MMS-style attention
    adapters (``adapter_attn_dim``), a bottleneck added after the feed-forward that the fused layer lacks."""

    NORM_FIRST: ClassVar[bool] = True

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        if getattr(layer, "adapter_layer", None) is not None:
            raise UnsupportedModelError(
                f"{self.bt_layer_name}: config.adapter_attn_dim={getattr(config, 'adapter_attn_dim', None)!r} adds a "
                "per-language attention adapter (MMS) after each layer's feed-forward, which the converted layer "
                "does not compute; keep this model unconverted, or set adapter_attn_dim=None for a model without "
                "adapter weights."
            )


class SpeechEncoderLayerAdapter(BetterTransformerBaseLayer):
    """``WhisperEncoderLayer`` and ``Speech2TextEncoderLayer``: pre-norm, ``self_attn.{q,k,v,out}_proj``
    (Whisper's key projection has no bias), ``fc1``/``fc2``, and a clamp of float16 outputs."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        attention = find_submodule(layer, ("self_attn",), "self-attention")
        self.use_linears(
            in_proj=(
                find_submodule(layer, ("self_attn.q_proj",), "query projection"),
                find_submodule(layer, ("self_attn.k_proj",), "key projection"),
                find_submodule(layer, ("self_attn.v_proj",), "value projection"),
            ),
            out_proj=find_submodule(layer, ("self_attn.out_proj",), "attention output projection"),
            linear1=find_submodule(layer, ("fc1",), "feed-forward input"),
            linear2=find_submodule(layer, ("fc2",), "feed-forward output"),
        )
        self.use_norms(
            norm1=find_submodule(layer, ("self_attn_layer_norm",), "attention layer norm"),
            norm2=find_submodule(layer, ("final_layer_norm",), "feed-forward layer norm"),
        )
        self.num_heads = int(attention.num_heads)
        self.embed_dim = int(attention.embed_dim)
        self.norm_first = True
        if float(attention.scaling) != self.attention_head_dim**-0.5:
            raise UnsupportedModelError(
                f"{self.bt_layer_name}: its attention scales scores by {attention.scaling}, not head_dim ** -0.5; "
                "upgrade bt-plugins-audio, or keep this model unconverted."
            )
        self.activation = check_activation(
            layer.activation_fn, getattr(config, "activation_function", None), self.bt_layer_name, "activation_function"
        )
        self.attention_dropout = float(attention.dropout)
        self.hidden_dropout = float(layer.dropout)  # both branches' outputs
        self.feed_forward_inner_dropout = float(layer.activation_dropout)

    def format_output(self, hidden_states: Tensor, attentions: Tensor | None, call: LayerCall) -> Any:
        return super().format_output(clamp_float16(hidden_states, always=True), attentions, call)

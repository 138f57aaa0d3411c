"""ESM (ESM-1b, ESM-2): a pre-norm layer with rotary positions ("half" style) on queries and keys.

``EsmLayer`` is ``x + out(attention(LayerNorm_a(x)))`` then ``x + fc2(gelu(fc1(LayerNorm(x))))``.
What happens around the layers stays with the model: the embeddings (token dropout's rescaling of
masked tokens, absolute positions for ESM-1b), ``emb_layer_norm_after`` after the last layer, and the
heads.

Positions follow the attention module's ``position_embedding_type``:

- ``"rotary"`` (ESM-2): ``EsmModel`` computes ``(cos, sin)`` once per forward from its rotary
  embedding (for the given ``position_ids``, else ``0..seq-1``) and passes them to every layer as
  ``position_embeddings``; the attention rotates q and k with ``rotate_half``. The adapter hands that
  pair to bt's strategies with ``rotary="half"``. ESM scales the queries by ``1/sqrt(head_dim)``
  *before* rotating and then takes unscaled scores; bt rotates and scales the scores. A rotation is
  linear, so ``R(s * q) . k = s * (R(q) . k)``: the same function (the rounding differs at the last
  bit in float32, and in float16/bfloat16 where ESM rotates in float32 and bt in the model's dtype).
- ``"absolute"`` (ESM-1b): positions are added by the embeddings; the layer is plain attention.
- ``"relative_key"``/``"relative_key_query"``: refused (see :meth:`EsmLayerAdapter.check_config`).

The feed-forward always computes ESM's own erf gelu (``EsmIntermediate`` ignores any activation
field; ESM configs have none), which is ``"gelu"``. Checked against transformers 5.10.2 and 5.24.0:
the encoder calls each layer with keywords and records hidden states and attentions with hooks.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, UnsupportedModelError
from bt_core.layer import LayerCall, find_submodule

from .adapters import BertLayerAdapter

__all__ = ["EsmLayerAdapter"]

_PLUGIN = "bt-plugins-encoders"
_RELATIVE = ("relative_key", "relative_key_query")


class EsmLayerAdapter(BetterTransformerBaseLayer):
    """``EsmLayer``: pre-norm, BERT-named linears, rotary (``"half"``) or no positions in the layer."""

    #: role -> candidate dotted paths (the pack's convention, see ``adapters.EncoderLayerAdapter``).
    PATHS: ClassVar[dict[str, tuple[str, ...]]] = {
        **BertLayerAdapter.PATHS,
        "first layer norm": ("attention.LayerNorm",),
        "second layer norm": ("LayerNorm",),
    }
    SELF_ATTENTION_PATHS: ClassVar[tuple[str, ...]] = ("attention.self",)
    #: ``EsmLayer.forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
    #: position_embeddings)``: where ``position_embeddings`` sits among the arguments after ``hidden_states``.
    POSITION_EMBEDDINGS_ARG: ClassVar[int] = 3

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        self.check_config(layer, config)
        get = {role: find_submodule(layer, paths, role, plugin=_PLUGIN) for role, paths in self.PATHS.items()}
        # Modules, not weights: a PEFT LoRA layer or a quantized Linear in a linear's place is called.
        self.use_linears(
            in_proj=(get["query"], get["key"], get["value"]),
            out_proj=get["attention output"],
            linear1=get["feed-forward input"],
            linear2=get["feed-forward output"],
        )
        self.use_norms(norm1=get["first layer norm"], norm2=get["second layer norm"])
        self.norm_first = True
        attention = find_submodule(layer, self.SELF_ATTENTION_PATHS, "self-attention", plugin=_PLUGIN)
        self.num_heads = int(getattr(attention, "num_attention_heads", config.num_attention_heads))
        self.embed_dim = int(config.hidden_size)
        self.head_dim = int(getattr(attention, "attention_head_size", self.embed_dim // self.num_heads))
        self.activation = "gelu"  # EsmIntermediate's x * 0.5 * (1 + erf(x / sqrt(2))), whatever the config says
        self.rotary = "half" if _position_type(attention, config) == "rotary" else None
        self.attention_dropout = float(getattr(config, "attention_probs_dropout_prob", 0.0) or 0.0)
        self.hidden_dropout = float(getattr(config, "hidden_dropout_prob", 0.0) or 0.0)

    def check_config(self, layer: nn.Module, config: Any) -> None:
        """Refuse what this layer computes and bt's strategies do not."""
        where = f"{type(layer).__name__} ({type(config).__name__})"
        attention = find_submodule(layer, self.SELF_ATTENTION_PATHS, "self-attention", plugin=_PLUGIN)
        position = _position_type(attention, config)
        if position in _RELATIVE or hasattr(attention, "distance_embedding"):
            raise UnsupportedModelError(
                f"{where}: position_embedding_type={position!r} asks for relative-position attention: a learned "
                "distance embedding multiplied with the queries (and keys) inside every layer's scores, which no "
                "bt strategy computes (it is not a fixed bias). transformers releases also differ in whether "
                "the ESM layer applies it at all, so converting it as plain attention could silently drop it. "
                "Keep this model unconverted; ESM-2 checkpoints use 'rotary' and ESM-1b 'absolute', both convert."
            )
        if position not in ("rotary", "absolute", None):
            raise UnsupportedModelError(
                f"{where}: position_embedding_type={position!r} is not one bt-plugins-encoders knows for ESM "
                "('rotary' and 'absolute' convert). Keep this model unconverted, or upgrade the plugin."
            )
        if getattr(config, "add_cross_attention", False) or _has_child(layer, "crossattention"):
            raise UnsupportedModelError(
                f"{where}: config.add_cross_attention=True adds cross-attention to every layer, which bt does "
                "not compute. Load the model as an encoder (is_decoder=False, add_cross_attention=False) to "
                "convert it."
            )
        if getattr(config, "is_decoder", False):
            raise UnsupportedModelError(
                f"{where}: config.is_decoder=True makes the self-attention causal, which the ESM adapter does "
                "not convert. Load the model with is_decoder=False (as an encoder) to convert it."
            )

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        call = super().parse_call(hidden_states, args, kwargs)
        if self.rotary is None:
            return call  # like the original, an absolute-position layer ignores position_embeddings
        if len(args) > self.POSITION_EMBEDDINGS_ARG:
            position_embeddings = args[self.POSITION_EMBEDDINGS_ARG]
        else:
            position_embeddings = kwargs.get("position_embeddings")
        if position_embeddings is None:
            raise UnsupportedModelError(
                f"{type(self).__name__} ({self.bt_layer_name}): a rotary ESM layer was called without "
                "position_embeddings (the (cos, sin) pair EsmModel computes from its rotary_embeddings); the "
                "original layer cannot run without them either. Call the layer through EsmModel, or pass "
                "position_embeddings=model.rotary_embeddings(hidden_states, position_ids)."
            )
        cos, sin = position_embeddings
        call.rotary = (cos, sin)
        return call


def _position_type(attention: nn.Module, config: Any) -> str | None:
    """The attention module's own setting (what its forward reads), else the config's."""
    return getattr(attention, "position_embedding_type", None) or getattr(config, "position_embedding_type", None)


def _has_child(layer: nn.Module, name: str) -> bool:
    return any(child_name == name for child_name, _ in layer.named_children())

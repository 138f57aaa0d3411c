"""The adapter of ``EuroBertDecoderLayer``: a llama-shaped layer that EuroBERT runs as a bidirectional encoder.

Pre-norm RMSNorm, grouped-query attention (``num_key_value_heads``) with rotary positions (llama's
``rotate_half``) from the cos/sin the model passes every layer as ``position_embeddings``, and a SwiGLU
feed-forward ``down(act(gate(x)) * up(x))``; biases only where ``attention_bias``/``mlp_bias`` ask.
Despite the class name the attention is not causal: ``EuroBertAttention.is_causal`` is False and
``EuroBertModel`` passes the mask of ``create_bidirectional_mask`` (None without padding, else a 4-D
bool keep mask, or an additive float one with eager attention), which the engine reads as a padding
mask. Module names are the same in transformers 5.10.2 and 5.24.0 (only the cache argument was renamed,
``past_key_values`` to ``cache``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, UnsupportedModelError
from bt_core.layer import LayerCall, check_activation, find_submodule

from .nomic_bert import read_rotary, use_llama_linears

__all__ = ["EuroBertLayerAdapter"]

_PLUGIN = "bt-plugins-encoders"


class EuroBertLayerAdapter(BetterTransformerBaseLayer):
    """``EuroBertDecoderLayer``: pre-norm RMSNorms, grouped-query rotary ("half") attention, SwiGLU."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)

        def get(path: str, what: str) -> nn.Module:
            return find_submodule(layer, (path,), what, plugin=_PLUGIN)

        attention = get("self_attn", "attention")
        if getattr(attention, "is_causal", False):
            raise UnsupportedModelError(
                f"{type(layer).__name__}: self_attn.is_causal is True, so the layer attends causally when "
                "the model passes no mask; bt converts EuroBERT as the bidirectional encoder it is. Set "
                "is_causal back to False, or keep this model unconverted."
            )
        use_llama_linears(self, get)
        self.use_norms(
            norm1=get("input_layernorm", "attention RMSNorm"),
            norm2=get("post_attention_layernorm", "feed-forward RMSNorm"),
        )
        self.gated_half = "first"
        self.rotary = "half"
        self.norm_first = True
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads or config.num_attention_heads)
        self.embed_dim = int(config.hidden_size)
        self.head_dim = int(attention.head_dim)
        self.score_scale = float(attention.scaling)
        act = get("mlp.act_fn", "feed-forward activation")
        self.activation = check_activation(act, config.hidden_act, type(layer).__name__, "hidden_act")
        # Dropout only on the attention probabilities: the layer has none on its residual branches.
        self.attention_dropout = float(config.attention_dropout or 0.0)

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        for name in ("cache", "past_key_values"):
            if kwargs.get(name) is not None:
                raise UnsupportedModelError(
                    f"{self.bt_layer_name} was called with a key/value cache ({name}=...): a converted layer "
                    "computes the encoder, which attends over the whole input at once. Call the model "
                    "without a cache, or reverse the conversion first."
                )
        call = super().parse_call(hidden_states, args, kwargs)
        call.rotary = read_rotary(self, kwargs)
        return call

"""The adapter of ``NomicBertLayer`` (nomic-embed-text): rotary positions, SwiGLU feed-forward, post-norm.

The layer is BERT's post-norm layout (attention, dropout, residual, LayerNorm; feed-forward, dropout,
residual, LayerNorm) with bias-free q/k/v/o projections, rotary positions (llama's ``rotate_half``) on
q and k from the cos/sin the model computes once and passes every layer as ``position_embeddings``,
and a gated feed-forward ``down(act(gate(x)) * up(x))``. Module names are the same in transformers
5.10.2 and 5.24.0 (the original checkpoints' fused ``Wqkv`` is split into ``q_proj``/``k_proj``/
``v_proj`` when transformers loads them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, UnsupportedModelError
from bt_core.layer import LayerCall, check_activation, find_submodule

__all__ = ["NomicBertLayerAdapter", "read_rotary"]

_PLUGIN = "bt-plugins-encoders"


def read_rotary(layer: BetterTransformerBaseLayer, kwargs: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The ``(cos, sin)`` the model's encoder passes every layer as ``position_embeddings``."""
    rotary = kwargs.get("position_embeddings")
    if rotary is None:
        raise UnsupportedModelError(
            f"{layer.bt_layer_name} was called without position_embeddings (the rotary cos/sin its model computes "
            "once and passes to every layer); call the converted layer as the model's encoder does, with "
            "position_embeddings=(cos, sin)."
        )
    cos, sin = rotary
    return cos, sin


def use_llama_linears(adapter: BetterTransformerBaseLayer, get: Callable[[str, str], nn.Module]) -> None:
    """Declare the llama family's linears: ``self_attn.{q,k,v,o}_proj`` and a SwiGLU ``mlp`` whose
    ``gate_proj`` goes through the activation and multiplies ``up_proj`` before ``down_proj``."""
    q, k, v = (get(f"self_attn.{x}_proj", what) for x, what in (("q", "query"), ("k", "key"), ("v", "value")))
    adapter.use_linears(
        in_proj=(q, k, v),
        out_proj=get("self_attn.o_proj", "attention output"),
        linear1=(get("mlp.gate_proj", "feed-forward gate"), get("mlp.up_proj", "feed-forward up")),
        linear2=get("mlp.down_proj", "feed-forward output"),
    )
    adapter.gated_half = "first"


class NomicBertLayerAdapter(BetterTransformerBaseLayer):
    """``NomicBertLayer``: post-norm LayerNorms, rotary ("half") q/k, SwiGLU (gate half first), no biases."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)

        def get(path: str, what: str) -> nn.Module:
            return find_submodule(layer, (path,), what, plugin=_PLUGIN)

        attention = get("self_attn", "attention")
        use_llama_linears(self, get)
        self.use_norms(
            norm1=get("post_attention_layernorm", "attention layer norm"),
            norm2=get("post_mlp_layernorm", "feed-forward layer norm"),
        )
        self.gated_half = "first"
        self.rotary = "half"
        self.norm_first = False
        self.num_heads = int(config.num_attention_heads)
        self.embed_dim = int(config.hidden_size)
        self.head_dim = int(attention.head_dim)
        self.score_scale = float(attention.scaling)
        act = get("mlp.act_fn", "feed-forward activation")
        self.activation = check_activation(act, config.hidden_act, type(layer).__name__, "hidden_act")
        self.attention_dropout = float(config.attention_probs_dropout_prob or 0.0)
        # post_attention_dropout and post_mlp_dropout: both branches, before their residual add.
        self.hidden_dropout = float(config.hidden_dropout_prob or 0.0)

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        call = super().parse_call(hidden_states, args, kwargs)
        call.rotary = read_rotary(self, kwargs)
        return call

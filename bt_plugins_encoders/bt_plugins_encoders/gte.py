"""The adapter for transformers' GTE encoder layer (``GteLayer``, model type ``gte``, new in transformers 5.x).

``GteLayer`` (gte-multilingual-base, gte-*-v1.5 converted to transformers' own code) is post-norm:
``norm1(x + o(attention(x)))`` then ``norm2(x + down(act(gate(x)) * up(x)))``. Its attention applies
llama-style rotary positions (``rotate_half``) over the whole head, from the ``(cos, sin)`` that
``GteModel`` computes once and passes every layer as ``position_embeddings``; the adapter hands those
tables on unchanged, so every rope variant the model computes (scaled, dynamic) stays exact. The
gate and up projections are bias-free, the down projection has a bias.

Nothing here imports transformers' gte module: on a transformers without it (5.10) this module still
imports, and there is simply no ``GteLayer`` to convert.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bt_core import BetterTransformerBaseLayer, BetterTransformerError
from bt_core.layer import LayerCall, check_activation, find_submodule

__all__ = ["GteLayerAdapter"]

_PLUGIN = "bt-plugins-encoders"


class GteLayerAdapter(BetterTransformerBaseLayer):
    """``GteLayer``: rotary ("half"), gated feed-forward (activation on ``gate_proj``), post-norm."""

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        get = lambda path, what: find_submodule(layer, (path,), what, plugin=_PLUGIN)  # noqa: E731
        attention = get("self_attn", "self-attention")
        self.use_linears(
            in_proj=(
                get("self_attn.q_proj", "query"),
                get("self_attn.k_proj", "key"),
                get("self_attn.v_proj", "value"),
            ),
            out_proj=get("self_attn.o_proj", "attention output"),
            # GteMLP computes act(gate_proj(x)) * up_proj(x): the activated half comes first.
            linear1=(get("mlp.gate_proj", "feed-forward gate"), get("mlp.up_proj", "feed-forward up")),
            linear2=get("mlp.down_proj", "feed-forward output"),
        )
        self.use_norms(
            norm1=get("post_attention_layernorm", "first layer norm"),
            norm2=get("post_mlp_layernorm", "second layer norm"),
        )
        self.norm_first = False
        self.gated_half = "first"
        self.rotary = "half"
        self.num_heads = int(config.num_attention_heads)
        self.embed_dim = int(config.hidden_size)
        self.head_dim = int(attention.head_dim)
        self.score_scale = float(attention.scaling)
        act = get("mlp.act_fn", "feed-forward activation")
        self.activation = check_activation(act, config.hidden_act, type(layer).__name__, "hidden_act")
        self.attention_dropout = float(config.attention_probs_dropout_prob)
        self.hidden_dropout = float(config.hidden_dropout_prob)
        # GteMLP drops out act(gate) * up before down_proj, inside the feed-forward branch.
        inner_dropout = get("mlp.dropout", "feed-forward dropout")
        self.feed_forward_inner_dropout = float(inner_dropout.p) if isinstance(inner_dropout, nn.Dropout) else 0.0

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        """``GteModel`` calls ``layer(hidden, attention_mask=..., position_embeddings=(cos, sin))``."""
        call = super().parse_call(hidden_states, args, kwargs)
        rotary = args[1] if len(args) > 1 else kwargs.get("position_embeddings")
        if rotary is None:
            raise BetterTransformerError(
                f"{self.bt_layer_name} was called without position_embeddings (the rotary cos/sin GteModel "
                "computes); call the layer through GteModel, or pass position_embeddings=(cos, sin)."
            )
        call.rotary = (rotary[0], rotary[1])
        return call

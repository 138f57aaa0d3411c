"""RoFormer: BERT's post-norm layer with rotary positions on queries and keys.

``RoFormerEncoder`` computes one sinusoidal table per forward (``[sin | cos]`` halves, one row per
position, ``head_dim`` wide) and hands it to every layer as ``sinusoidal_pos``; each layer's attention
rotates interleaved channel pairs ``(q0, q1), (q2, q3), ...`` of its queries and keys by it. The
adapter reads that argument and declares ``rotary="interleaved"`` with the table widened exactly as
the original widens it (each frequency repeated for the two channels of its pair), so bt's strategies
apply the same rotation to the same channels.

``rotary_value=True`` rotates the values too. That rotation depends on each key's position, so it
cannot be folded into the value projection, and bt's attention rotates queries and keys only: such
layers are refused.

Checked against transformers 5.10.2 and 5.24.0: ``RoFormerLayer(hidden_states, attention_mask,
sinusoidal_pos, encoder_hidden_states, encoder_attention_mask, cache, output_attentions)``, called
positionally, returning a tuple; the encoder records hidden states and attentions in its own loop.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bt_core import UnsupportedModelError
from bt_core.layer import LayerCall, find_submodule

from .adapters import TupleBertLayerAdapter

__all__ = ["RoFormerLayerAdapter", "rotary_tables"]


def rotary_tables(sinusoidal_pos: Tensor) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` for bt's interleaved rotary from RoFormer's ``[sin | cos]`` table ``(..., seq, head_dim)``.

    The same ops as ``RoFormerSelfAttention.apply_rotary_position_embeddings``: each half is repeated
    pairwise, ``[t0, t1, ...] -> [t0, t0, t1, t1, ...]``, so channel pair ``(2i, 2i+1)`` turns by angle ``i``.
    """
    sin, cos = sinusoidal_pos.chunk(2, dim=-1)
    sin_pos = torch.stack([sin, sin], dim=-1).reshape_as(sinusoidal_pos)
    cos_pos = torch.stack([cos, cos], dim=-1).reshape_as(sinusoidal_pos)
    return cos_pos, sin_pos


class RoFormerLayerAdapter(TupleBertLayerAdapter):
    """``RoFormerLayer``: BERT's weights and post-norm, rotary positions (interleaved pairs) on q and k."""

    #: Positions among the arguments after ``hidden_states``: (attention_mask, sinusoidal_pos,
    #: encoder_hidden_states, encoder_attention_mask, cache, output_attentions).
    SINUSOIDAL_POS_ARG: ClassVar[int] = 1
    CACHE_ARG: ClassVar[int] = 4
    OUTPUT_ATTENTIONS_ARG: ClassVar[int] = 5

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        self.rotary = "interleaved"

    def check_config(self, layer: nn.Module, config: Any) -> None:
        super().check_config(layer, config)
        attention = find_submodule(layer, ("attention.self",), "self-attention", plugin="bt-plugins-encoders")
        # The module's own flag is what its forward reads; the config's is where it came from.
        rotary_value = getattr(attention, "rotary_value", getattr(config, "rotary_value", False))
        if rotary_value:
            raise UnsupportedModelError(
                f"{type(layer).__name__} ({type(config).__name__}): rotary_value=True rotates the attention "
                "values as well as the queries and keys. The value rotation depends on each key's position, so "
                "it cannot be folded into the value projection, and bt's attention rotates queries and keys "
                "only. Keep this model unconverted (RoFormer checkpoints with rotary_value=False convert)."
            )

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        call = super().parse_call(hidden_states, args, kwargs)
        if len(args) > self.CACHE_ARG:
            cache = args[self.CACHE_ARG]
        else:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            # Not reachable through RoFormerModel with is_decoder=False (refused otherwise), which
            # makes no cache; a layer called with one would have to extend it.
            raise UnsupportedModelError(
                f"{type(self).__name__} ({self.bt_layer_name}) was called with a key/value cache; converted "
                "RoFormer layers are encoder layers and keep none. Call the model without a cache, or "
                "BetterTransformer.reverse() it first."
            )
        if len(args) > self.SINUSOIDAL_POS_ARG:
            sinusoidal_pos = args[self.SINUSOIDAL_POS_ARG]
        else:
            sinusoidal_pos = kwargs.get("sinusoidal_pos")
        if sinusoidal_pos is not None:  # without it the original rotates nothing either
            call.rotary = rotary_tables(sinusoidal_pos)
        return call

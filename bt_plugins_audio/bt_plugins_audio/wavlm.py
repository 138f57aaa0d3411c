"""WavLM's encoder layers (``WavLMEncoderLayer``, ``WavLMEncoderLayerStableLayerNorm``): wav2vec2's layout
plus a gated relative position bias.

The bias: the first layer's attention computes a bucketed relative position bias ``(heads, t, t)`` from its
embedding and the stack hands it down; each layer multiplies it, per head and per query frame, by a gate
computed from the attention's own input (the layer input, or its first layer norm in the pre-norm layer)
through ``gru_rel_pos_linear`` and ``gru_rel_pos_const``. The adapter computes that gated bias in
``parse_call``, with the layer's own modules (registered here, so they train and go back with the layer),
and hands the attention the result as the call's score bias; the padding stays in the mask.

The gate reads every frame's hidden state, so each converted layer hands back the padded batch
(``pads_every_output``) instead of packed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from bt_core import PackedTokens, UnsupportedModelError
from bt_core.layer import AttentionProbe, LayerCall

from .adapters import LEGACY_CALLS, Wav2Vec2LayerAdapter

__all__ = ["WavLMLayerAdapter", "WavLMStableLayerNormAdapter"]


class HeadAveragedProbe(AttentionProbe):
    """What WavLM records as attentions: its attention (``F.multi_head_attention_forward``) averages the
    probabilities over heads, and transformers broadcasts the average back to every head."""

    def forward(self, context: Tensor, probabilities: Tensor) -> tuple[Tensor, Tensor]:
        return context, probabilities.mean(dim=1, keepdim=True).expand_as(probabilities)


@dataclass
class WavLMCall(LayerCall):
    """A call of a WavLM layer: the ungated relative position bias travels on to the next layer."""

    position_bias: Tensor | None = None


class WavLMLayerAdapter(Wav2Vec2LayerAdapter):
    """``WavLMEncoderLayer``: post-norm; the gate reads the layer's input."""

    returns_tuple: ClassVar[bool] = True  # (hidden_states, position_bias), + attentions in 5.10 when asked
    pads_every_output: ClassVar[bool] = True

    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__(layer, config)
        attention = layer.attention
        for name in ("gru_rel_pos_linear", "gru_rel_pos_const", "compute_bias"):
            if not hasattr(attention, name):
                raise UnsupportedModelError(
                    f"{self.bt_layer_name}: its attention has no {name}, which the gated relative position bias "
                    "bt computes needs; the installed transformers changed WavLM. Upgrade bt-plugins-audio, or keep "
                    "this model unconverted."
                )
        # Registered (not only read): trainable parameters of the model, counted once, given back on reverse.
        self.gru_rel_pos_linear = attention.gru_rel_pos_linear
        self.gru_rel_pos_const = attention.gru_rel_pos_const
        self.rel_attn_embed = getattr(attention, "rel_attn_embed", None)  # the first layer's only
        self.__dict__["_attention"] = attention  # for compute_bias; its q/k/v are fused here
        self.__dict__["_gate_norm"] = layer.layer_norm if self.NORM_FIRST else None
        self.attention_probe = HeadAveragedProbe()

    def parse_call(self, hidden_states: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        mask = args[0] if args else kwargs.get("attention_mask")
        position_bias = args[1] if len(args) > 1 else kwargs.get("position_bias")
        padded = hidden_states.padded() if isinstance(hidden_states, PackedTokens) else hidden_states
        batch, frames, _ = padded.shape
        if position_bias is None:  # the first layer: (heads, t, t), repeated per row as the original does
            own = self._attention.compute_bias(frames, frames)
            position_bias = own.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * self.num_heads, frames, frames)
        gate_input = padded if self._gate_norm is None else self._gate_norm(padded)
        gate = self.gate(gate_input)  # (batch, heads, t, 1)
        bias = (gate.reshape(batch * self.num_heads, frames, 1) * position_bias).view(
            batch, self.num_heads, frames, frames
        )
        return WavLMCall(
            hidden_states=hidden_states,
            attention_mask=mask,
            output_attentions=bool(kwargs.get("output_attentions", False)),
            score_bias=bias,
            position_bias=position_bias,
        )

    def gate(self, hidden_states: Tensor) -> Tensor:
        """WavLM's gate, ``(batch, heads, t, 1)``: per head, two sigmoid gates from a linear map of the head's
        slice of the attention input (each the sum of four outputs), combined with a learned constant."""
        batch, frames, _ = hidden_states.shape
        per_head = hidden_states.view(batch, frames, self.num_heads, -1).permute(0, 2, 1, 3)
        projected = self.gru_rel_pos_linear(per_head).view(*per_head.shape[:-1], 2, 4).sum(-1)
        gate_a, gate_b = projected.sigmoid().chunk(2, dim=-1)
        return gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0

    def format_output(self, hidden_states: Tensor, attentions: Tensor | None, call: LayerCall) -> Any:
        position_bias = getattr(call, "position_bias", None)
        if LEGACY_CALLS and call.output_attentions:
            return hidden_states, position_bias, attentions
        return hidden_states, position_bias


class WavLMStableLayerNormAdapter(WavLMLayerAdapter):
    """``WavLMEncoderLayerStableLayerNorm``: pre-norm; the gate reads the first layer norm's output."""

    NORM_FIRST: ClassVar[bool] = True

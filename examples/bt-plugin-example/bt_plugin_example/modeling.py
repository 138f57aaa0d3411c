"""ACME's in-house text encoder, as a transformers model.

A pre-norm encoder (layer norm before attention and before the feed-forward, a final norm after
the last layer), with separate q/k/v projections of which the key projection has no bias.
Importing this module registers the config and model with ``AutoConfig``/``AutoModel``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils.output_capturing import capture_outputs

__all__ = ["AcmeEncoderConfig", "AcmeEncoderLayer", "AcmeEncoderModel"]


class AcmeEncoderConfig(PretrainedConfig):
    model_type = "acme-encoder"

    def __init__(
        self,
        vocab_size: int = 1000,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        ffn_size: int = 1024,
        max_positions: int = 512,
        activation: str = "gelu",
        norm_eps: float = 1e-6,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ffn_size = ffn_size
        self.max_positions = max_positions
        self.activation = activation
        self.norm_eps = norm_eps
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range


class AcmeAttention(nn.Module):
    def __init__(self, config: AcmeEncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)  # softmax ignores a key bias
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_dropout)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq_len, hidden = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = (
            heads(self.q_proj(hidden_states)),
            heads(self.k_proj(hidden_states)),
            heads(self.v_proj(hidden_states)),
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = self.dropout(scores.softmax(dim=-1))
        context = (weights @ v).transpose(1, 2).reshape(batch, seq_len, hidden)
        return self.out_proj(context), weights


class AcmeFeedForward(nn.Module):
    def __init__(self, config: AcmeEncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.ffn_size)
        self.act = ACT2FN[config.activation]
        self.down = nn.Linear(config.ffn_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(hidden_states)))


class AcmeEncoderLayer(nn.Module):
    """Pre-norm: ``x + attn(norm(x))``, then ``x + ffn(norm(x))``."""

    def __init__(self, config: AcmeEncoderConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attention = AcmeAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.ffn = AcmeFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        attended, _ = self.attention(self.attention_norm(hidden_states), attention_mask)
        hidden_states = hidden_states + self.dropout(attended)
        return hidden_states + self.dropout(self.ffn(self.ffn_norm(hidden_states)))


class AcmeEncoderModel(PreTrainedModel):
    config_class = AcmeEncoderConfig
    base_model_prefix = "acme"
    _can_record_outputs: ClassVar[dict[str, type]] = {"hidden_states": AcmeEncoderLayer, "attentions": AcmeAttention}

    def __init__(self, config: AcmeEncoderConfig) -> None:
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden_size)
        self.layers = nn.ModuleList(AcmeEncoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    @capture_outputs
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutput:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden_states = self.token_embeddings(input_ids) + self.position_embeddings(positions)
        additive = None
        if attention_mask is not None:  # (batch, seq) keep mask -> (batch, 1, 1, seq) additive mask
            keep = attention_mask[:, None, None, :].to(torch.bool)
            additive = torch.zeros(keep.shape, dtype=hidden_states.dtype, device=keep.device)
            additive = additive.masked_fill(~keep, torch.finfo(hidden_states.dtype).min)
        for layer in self.layers:
            hidden_states = layer(hidden_states, additive)
        return BaseModelOutput(last_hidden_state=self.final_norm(hidden_states))


AutoConfig.register(AcmeEncoderConfig.model_type, AcmeEncoderConfig, exist_ok=True)
AutoModel.register(AcmeEncoderConfig, AcmeEncoderModel, exist_ok=True)

"""``LastHidden``: a transformers model as a module returning its last hidden state, which
``torch.jit.trace`` can trace (it refuses the model's output dataclass). Shared by the tracing tests."""

from __future__ import annotations

import torch


class LastHidden(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(ids, attention_mask=mask).last_hidden_state

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bt_core.registry import PluginRegistry, set_default_registry

from .toy_model import ToyConfig, ToyModel, ToyPlugin


@pytest.fixture
def registry() -> Iterator[PluginRegistry]:
    """A fresh registry holding only the toy plugin, installed as the process default for one test."""
    fresh = PluginRegistry(discover=False)
    fresh.register(ToyPlugin(), "toy")
    previous = set_default_registry(fresh)
    try:
        yield fresh
    finally:
        set_default_registry(previous)


def make_toy(**overrides: object) -> ToyModel:
    torch.manual_seed(0)
    return ToyModel(ToyConfig(**overrides)).eval()


def padded_batch(
    lengths: list[int], seq_len: int, vocab: int = 50, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and a keep mask with one row per length, padded to ``seq_len``."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (len(lengths), seq_len), generator=generator)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left:
            mask[row, seq_len - length :] = 1
        else:
            mask[row, :length] = 1
    return ids, mask


def max_diff_on_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask[..., None]).max())

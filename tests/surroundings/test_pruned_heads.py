"""Attention heads pruned by hand (transformers' ``prune_linear_layer`` on q/k/v and the output
projection): the fused layer splits the full hidden size across heads, so it refuses, saying so."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import prune_linear_layer

from bt_core import BetterTransformer, BetterTransformerError

from .conftest import assert_unchanged, batch, build_bert, run, snapshot


def prune_heads(model: torch.nn.Module, layer: int, heads: set[int]) -> None:
    """Remove ``heads`` from ``layer``'s self-attention, as transformers' old ``prune_heads`` did."""
    attention = model.encoder.layer[layer].attention
    self_attention = attention.self
    size = self_attention.attention_head_size
    keep = [h for h in range(self_attention.num_attention_heads) if h not in heads]
    index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
    self_attention.query = prune_linear_layer(self_attention.query, index)
    self_attention.key = prune_linear_layer(self_attention.key, index)
    self_attention.value = prune_linear_layer(self_attention.value, index)
    attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
    self_attention.num_attention_heads = len(keep)
    self_attention.all_head_size = len(keep) * size


@pytest.mark.parametrize("layer", [0, 1], ids=["first-layer", "last-layer"])
def test_model_with_pruned_heads_is_refused_saying_they_were_pruned(layer: int) -> None:
    model = build_bert()
    prune_heads(model, layer, {0})
    inputs = batch(model.config)
    expected = run(model, inputs)
    before = snapshot(model)
    with pytest.raises(BetterTransformerError, match="pruned"):
        BetterTransformer.transform(model)
    assert_unchanged(model, before, inputs, expected)

"""Rows of close lengths share one attention call in the packed strategy, exactly.

Per-row attention is the reference here: grouping rows, padding them to the longest and masking the
padded keys must give the same tokens, for right and left padding, across several buckets.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from bt_core import BetterTransformer, _buckets, force_strategy
from bt_core._buckets import plan_buckets

#: Row lengths that fall in several buckets (100 and 90 together, 75 alone, then the short ones).
LENGTHS = [100, 75, 90, 3, 7, 7, 1]


def _runs(lengths: list[int], query_only: bool = False) -> list[tuple[int, int, int, list[int], bool]]:
    runs, start = [], 0
    for row, length in enumerate(lengths):
        runs.append((start, 1, length, [row], query_only))
        start += length
    return runs


def test_rows_group_while_the_wasted_pairs_stay_under_the_bound() -> None:
    plan = plan_buckets(_runs(LENGTHS), torch.device("cpu"))
    assert plan is not None
    assert [(b.rows, b.length) for b in plan.buckets] == [(2, 100), (1, 75), (4, 7)]
    for bucket in plan.buckets:
        assert bucket.gather.numel() == bucket.rows * bucket.length
        assert bucket.keep.shape == (bucket.rows, 1, 1, bucket.length)


def test_every_packed_token_maps_back_to_its_own_slot() -> None:
    plan = plan_buckets(_runs(LENGTHS), torch.device("cpu"))
    assert plan is not None
    gathered = torch.cat([bucket.gather for bucket in plan.buckets])
    assert torch.equal(gathered[plan.back], torch.arange(sum(LENGTHS)))


def test_a_query_only_first_position_is_no_key() -> None:
    plan = plan_buckets(_runs([5, 4], query_only=True), torch.device("cpu"))
    assert plan is not None
    (bucket,) = plan.buckets
    assert bucket.keep[:, 0, 0].tolist() == [[False, True, True, True, True], [False, True, True, True, False]]


def test_no_plan_when_grouping_saves_no_call() -> None:
    assert plan_buckets(_runs([100, 10]), torch.device("cpu")) is None
    assert plan_buckets([(0, 4, 16, [0, 1, 2, 3], False)], torch.device("cpu")) is None


@pytest.mark.parametrize("side", ["right", "left"])
def test_bucketed_attention_matches_per_row_attention_and_the_original(side: str, monkeypatch) -> None:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    original = BertModel(config).eval()
    seq = max(LENGTHS)
    mask = torch.zeros(len(LENGTHS), seq, dtype=torch.long)
    for row, length in enumerate(LENGTHS):
        mask[row, :length] = 1
    if side == "left":
        mask = mask.flip(1)
    ids = torch.randint(1, config.vocab_size, mask.shape)
    with torch.inference_mode():
        expected = original(ids, attention_mask=mask).last_hidden_state
        converted = BetterTransformer.transform(original, keep_original_model=True)
        with force_strategy("packed"):
            bucketed = converted(ids, attention_mask=mask).last_hidden_state
            monkeypatch.setattr(_buckets, "WASTED_PAIRS_PER_ROW", -1)  # every row its own call
            per_row = converted(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    if side == "left":
        real[:, 0] = True  # heads read position 0; the packed path computes it as the original does
    torch.testing.assert_close(bucketed[real], per_row[real], atol=1e-6, rtol=0)
    torch.testing.assert_close(bucketed[real], expected[real], atol=1e-5, rtol=0)

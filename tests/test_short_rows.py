"""The packed strategy attends rows of at most ``SHORT_ROW_TOKENS`` tokens together, in one batched call
per layer, and every longer row on its own: the result is the original's whatever the mix of lengths,
the padding side, grouped key/value heads or autocast.

BERT (plain attention) and EuroBERT (rotary positions, 2 key/value heads for 4 query heads), tiny, on
transformers 5.10.2 and 5.24.0.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import bt_core._packing
import bt_core._short_rows
from bt_core import BetterTransformer, force_strategy
from bt_core._short_rows import SHORT_ROW_TOKENS
from bt_core.testing.compare import compare_with_position_zero

SEQ = 70
#: Row lengths of each batch; rows longer than SHORT_ROW_TOKENS take their own attention call.
LENGTHS = {
    "mixed": [70, 12, 45, 3, 33, 32, 20, 1],
    "all short": [30, 12, 5, 30, 1],
    "all long": [70, 40, 50],
    "one short row": [70, 40, 12],
}


def _model(model_type: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        pytest.skip(f"this transformers has no model type {model_type!r}")
    extra = {"num_key_value_heads": 2} if model_type == "eurobert" else {}
    config = AutoConfig.for_model(
        model_type, hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2,
        vocab_size=100, max_position_embeddings=128, pad_token_id=0, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval().to(dtype)
    with torch.no_grad():  # fresh norms of exactly 1 and zero biases would hide a swapped part
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _batch(lengths: list[int], left: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    keep = torch.arange(SEQ)[None, :] < torch.tensor(lengths)[:, None]
    if left:
        keep = keep.flip(1)
    ids = torch.randint(1, 100, (len(lengths), SEQ), generator=generator)
    return {"input_ids": ids.masked_fill(~keep, 0), "attention_mask": keep.long()}


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture
def attention_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many per-row SDPA calls and batched short-row calls the packed strategy makes."""
    calls = {"rows": 0, "short rows": 0}
    sdpa, short = torch.nn.functional.scaled_dot_product_attention, bt_core._short_rows.attend_short_rows

    def count(name: str, function: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return function(*args, **kwargs)

        return counted

    monkeypatch.setattr(bt_core._packing.F, "scaled_dot_product_attention", count("rows", sdpa))
    monkeypatch.setattr(bt_core._packing, "attend_short_rows", count("short rows", short))
    return calls


def _largest_difference(expected: Any, actual: Any, mask: torch.Tensor) -> float:
    return max(diff.max_abs_diff for diff in compare_with_position_zero(expected, actual, mask))


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
@pytest.mark.parametrize("batch", list(LENGTHS))
@pytest.mark.parametrize("model_type", ["bert", "eurobert"])
def test_short_rows_attend_together_and_long_rows_alone_exactly(
    model_type: str, batch: str, left: bool, attention_calls: dict[str, int]
) -> None:
    original = _model(model_type, torch.float64)  # float64: a wrong weight or slot shows, rounding does not
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(LENGTHS[batch], left)
    with torch.inference_mode():
        expected = original(**inputs)
        with force_strategy("packed"):
            attention_calls.update({"rows": 0, "short rows": 0})
            actual = converted(**inputs)
    assert _largest_difference(expected, actual, inputs["attention_mask"]) < 1e-10
    # A left-padded row also carries its padded position 0 (a query heads read): one more token.
    packed_lengths = [n + (left and n < SEQ) for n in LENGTHS[batch]]
    short = [n for n in packed_lengths if n <= SHORT_ROW_TOKENS]
    long_runs = len([n for n in packed_lengths if n > SHORT_ROW_TOKENS])  # no two neighbours share a length
    layers = original.config.num_hidden_layers
    assert attention_calls["short rows"] == (layers if len(short) > 1 else 0)
    assert attention_calls["rows"] == layers * (long_runs + (len(short) == 1))


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
@pytest.mark.parametrize("model_type", ["bert", "eurobert"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_short_rows_under_autocast_err_no_more_than_autocast_or_one_call_per_row(
    model_type: str, left: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Autocast casts attention's inputs to its dtype (rotary positions promote q and k to float32 first);
    the batched call then rounds as SDPA's flash kernel does, so it errs no more than autocast's own
    rounding, or than one SDPA call per row (which float16 can exceed by a hair on its own)."""
    original = _model(model_type, torch.float32)
    converted = BetterTransformer.transform(original, keep_original_model=True)
    inputs = _batch(LENGTHS["mixed"], left)
    mask = inputs["attention_mask"]

    def packed() -> Any:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype), force_strategy("packed"):
            return converted(**inputs)

    with torch.inference_mode():
        full_precision = original(**inputs)
        with torch.autocast("cpu", dtype=dtype):
            expected = original(**inputs)
    batched = packed()
    monkeypatch.setattr(bt_core._packing, "SHORT_ROW_TOKENS", 0)
    one_call_per_row = packed()
    bound = max(
        _largest_difference(full_precision, expected, mask), _largest_difference(expected, one_call_per_row, mask)
    )
    assert 0 < _largest_difference(expected, batched, mask) <= bound
    if dtype == torch.bfloat16:
        assert _largest_difference(expected, batched, mask) <= _largest_difference(full_precision, expected, mask)

"""Autocast: converted layers keep a fast path and compute what the original computes under autocast.

On CPU, projections under autocast run from low-precision casts of the weights each layer makes once
(``bt_core._autocast_weights``); these specs pin down when the casts are made, remade and never saved.
Small models only; speed lives in ``bt bench --texts ... --dtype bfloat16`` and BENCHMARKS.md.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from last_hidden import LastHidden
from transformers import BertConfig, BertModel

from bt_core import BetterTransformer, _autocast_weights, _math, force_strategy
from bt_core._autocast_weights import CACHE_ATTRIBUTE
from bt_core._engine import record_strategies

LENGTHS = [9, 4, 12, 1, 7]

needs_native_bf16 = pytest.mark.skipif(
    torch.bfloat16 not in _math._ONEDNN_DTYPES, reason="this CPU or torch build has no native oneDNN bfloat16 linear"
)


def _bert() -> tuple[BertModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    model = BertModel(config).eval()
    mask = (torch.arange(12)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return model, torch.randint(1, config.vocab_size, mask.shape), mask


def _autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.encoder.layer)


@pytest.fixture
def linear_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.dtype, torch.dtype]]:
    """(input dtype, weight dtype) of every oneDNN linear computed from cached casts."""
    calls: list[tuple[torch.dtype, torch.dtype]] = []
    kernel = _autocast_weights._LINEAR
    assert kernel is not None

    def spy(x: torch.Tensor, weight: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append((x.dtype, weight.dtype))
        return kernel(x, weight, *args)

    monkeypatch.setattr(_autocast_weights, "_LINEAR", spy)
    return calls


@pytest.mark.parametrize("layout", ["padded", "unpadded", "left-padded"])
@pytest.mark.parametrize("strategy", ["packed", "dense", "auto"])
def test_autocast_inference_matches_the_original_under_the_same_autocast(strategy: str, layout: str) -> None:
    model, ids, mask = _bert()
    if layout == "unpadded":
        mask = torch.ones_like(mask)
    elif layout == "left-padded":
        mask = mask.flip(1)
    if strategy == "packed" and layout == "unpadded":
        pytest.skip("nothing to pack")
    keep = mask.bool()
    with torch.inference_mode():
        full_precision = model(ids, attention_mask=mask).last_hidden_state
        with _autocast():
            expected = model(ids, attention_mask=mask).last_hidden_state
        converted = BetterTransformer.transform(model, keep_original_model=True)
        with _autocast(), record_strategies(set()) as used, force_strategy(None if strategy == "auto" else strategy):
            actual = converted(ids, attention_mask=mask).last_hidden_state
    assert used <= {"packed", "dense"}, "autocast inference keeps a fast path"
    assert actual.dtype == expected.dtype
    autocast_error = (expected - full_precision)[keep].abs().max()
    assert (actual - expected)[keep].abs().max() <= autocast_error, "within autocast's own rounding"


@needs_native_bf16
def test_each_projection_weight_is_cast_once_and_multiplied_in_bfloat16(linear_calls: list) -> None:
    model, ids, mask = _bert()
    converted = BetterTransformer.transform(model)
    with torch.inference_mode(), _autocast():
        first = converted(ids, attention_mask=mask).last_hidden_state
        casts = [dict(layer.__dict__[CACHE_ATTRIBUTE]) for layer in _layers(converted)]
        second = converted(ids, attention_mask=mask).last_hidden_state
    assert linear_calls == [(torch.bfloat16, torch.bfloat16)] * (2 * 2 * 4)  # 2 calls, 2 layers, 4 projections
    for layer, before in zip(_layers(converted), casts, strict=True):
        after = layer.__dict__[CACHE_ATTRIBUTE]
        assert sorted(after) == ["in_proj", "linear1", "linear2", "out_proj"]
        assert all(after[role].weight is before[role].weight for role in after), "reused, not cast again"
    torch.testing.assert_close(first, second, atol=0, rtol=0)


@needs_native_bf16
def test_a_weight_changed_in_place_is_cast_again() -> None:
    model, ids, mask = _bert()
    converted = BetterTransformer.transform(model)
    with torch.inference_mode(), _autocast():
        before = converted(ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        _layers(converted)[0].linear2_weight.mul_(3.0)
    _assert_cast_again(converted, ids, mask, before)


@needs_native_bf16
def test_a_weight_replaced_by_a_new_tensor_is_cast_again() -> None:
    """The cast remembers the tensor it came from, not just its address, which a new tensor may reuse."""
    model, ids, mask = _bert()
    converted = BetterTransformer.transform(model)
    layer = _layers(converted)[0]
    with torch.inference_mode(), _autocast():
        before = converted(ids, attention_mask=mask).last_hidden_state
    old = layer.linear2_weight
    with torch.no_grad():
        layer.linear2_weight = torch.nn.Parameter(old.detach() * 3.0, requires_grad=old.requires_grad)
    del old
    _assert_cast_again(converted, ids, mask, before)


def _assert_cast_again(converted: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, before: torch.Tensor) -> None:
    """After a weight changed: the output changed, exactly as much as in a copy that starts without casts."""
    uncached = copy.deepcopy(converted)
    assert all(CACHE_ATTRIBUTE not in layer.__dict__ for layer in _layers(uncached))
    with torch.inference_mode(), _autocast():
        after = converted(ids, attention_mask=mask).last_hidden_state
        fresh = uncached(ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert not torch.equal(after[keep], before[keep])
    torch.testing.assert_close(after[keep], fresh[keep], atol=0, rtol=0)


@needs_native_bf16
def test_casts_are_never_saved_and_reverse_gives_the_original_back() -> None:
    model, ids, mask = _bert()
    reference = copy.deepcopy(model)
    converted = BetterTransformer.transform(model)
    keys = set(converted.state_dict())
    with torch.inference_mode(), _autocast():
        converted(ids, attention_mask=mask)
    assert set(converted.state_dict()) == keys
    restored = pickle.loads(pickle.dumps(converted))  # oneDNN's opaque layout has no storage to pickle
    assert all(CACHE_ATTRIBUTE not in layer.__dict__ for layer in _layers(restored))
    original = BetterTransformer.reverse(converted)
    for (name, value), expected in zip(original.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(value, expected), name


def test_autocast_training_takes_the_differentiable_path_and_casts_nothing() -> None:
    model, ids, mask = _bert()
    converted = BetterTransformer.transform(model).train()
    with _autocast(), record_strategies(set()) as used:
        converted(ids, attention_mask=mask).last_hidden_state.float().sum().backward()
    assert used == {"reference"}
    assert all(CACHE_ATTRIBUTE not in layer.__dict__ for layer in _layers(converted))


def test_autocast_under_tracing_casts_nothing() -> None:
    """A traced or exported graph holds aten ops autocast casts itself, never a cached cast."""
    model, ids, mask = _bert()
    converted = BetterTransformer.transform(model)
    with torch.no_grad(), _autocast(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(LastHidden(converted), (ids, mask), check_trace=False)
    assert all(CACHE_ATTRIBUTE not in layer.__dict__ for layer in _layers(converted))

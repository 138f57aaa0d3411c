"""Forward hooks on converted layers. Between converted layers of a padded batch the hidden states
travel packed: a hook on a middle layer receives a ``bt_core.PackedTokens`` (a tensor of the real
tokens, ``(tokens, hidden)``, in row-major order) whose ``.padded()`` is the ``(batch, seq, hidden)``
tensor the original layer's hook receives; the last layer's hook receives the padded tensor itself."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import bt_core
from bt_core import BetterTransformer

from .conftest import assert_close_on_real, batch, build_bert, run

LAYERS = 3
MIDDLE, LAST = 1, 2


def hooked_output(model: torch.nn.Module, layer: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a forward hook on ``model.encoder.layer[layer]`` receives as the hidden states output."""
    seen: list[Any] = []
    handle = model.encoder.layer[layer].register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        run(model, inputs)
    finally:
        handle.remove()
    (output,) = seen
    return output[0] if isinstance(output, tuple) else output


@pytest.fixture(scope="module")
def original_and_converted() -> tuple[torch.nn.Module, torch.nn.Module]:
    original = build_bert(num_hidden_layers=LAYERS)
    return original, BetterTransformer.transform(original, keep_original_model=True)


def test_hook_on_middle_layer_receives_packed_tokens_whose_padded_view_matches_original(
    original_and_converted: tuple[torch.nn.Module, torch.nn.Module],
) -> None:
    original, converted = original_and_converted
    inputs = batch(original.config)
    keep = inputs["attention_mask"].bool()
    expected = hooked_output(original, MIDDLE, inputs)
    packed = hooked_output(converted, MIDDLE, inputs)
    assert isinstance(packed, bt_core.PackedTokens) and isinstance(packed, torch.Tensor), type(packed)
    assert tuple(packed.shape) == (int(keep.sum()), original.config.hidden_size)
    assert_close_on_real(packed.as_subclass(torch.Tensor), expected[keep])
    padded = packed.padded()
    assert tuple(padded.shape) == tuple(expected.shape)
    assert_close_on_real(padded, expected, inputs["attention_mask"])


def test_hook_on_last_layer_receives_the_padded_batch(
    original_and_converted: tuple[torch.nn.Module, torch.nn.Module],
) -> None:
    original, converted = original_and_converted
    inputs = batch(original.config)
    expected = hooked_output(original, LAST, inputs)
    actual = hooked_output(converted, LAST, inputs)
    assert actual.dim() == 3
    assert_close_on_real(actual, expected, inputs["attention_mask"])


def test_hook_on_middle_layer_receives_the_padded_batch_under_the_dense_strategy(
    original_and_converted: tuple[torch.nn.Module, torch.nn.Module],
) -> None:
    original, converted = original_and_converted
    inputs = batch(original.config)
    expected = hooked_output(original, MIDDLE, inputs)
    with bt_core.force_strategy("dense"):
        actual = hooked_output(converted, MIDDLE, inputs)
    assert actual.dim() == 3
    assert_close_on_real(actual, expected, inputs["attention_mask"])

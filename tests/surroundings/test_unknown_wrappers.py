"""A module bt does not know in a linear's place is refused by class and path, before any swap.

bt computes plain ``nn.Linear``, PEFT adapter layers and dynamically quantized Linear exactly. Anything
else standing where a linear stands (a Linear subclass with its own forward), and any wrapper that an
adapter written for plugin API 1.0 reads through ``.weight``, would silently lose what it adds.
"""

from __future__ import annotations

import pytest
import torch
from api_1_0_adapter import api_1_0_plugin
from peft import LoraConfig, get_peft_model
from torch import nn

from bt_core import BetterTransformer, UnsupportedModelError
from bt_core.registry import PluginRegistry

from .conftest import assert_state_dict_identical, batch, build_bert, run, snapshot


class ScaledLinear(nn.Linear):
    """A home-made wrapper: a Linear that doubles its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_an_unknown_linear_subclass_is_refused_by_class_and_path_and_the_model_is_unchanged() -> None:
    model = build_bert()
    old = model.encoder.layer[1].attention.self.query
    wrapped = ScaledLinear(old.in_features, old.out_features)
    wrapped.load_state_dict(old.state_dict())
    model.encoder.layer[1].attention.self.query = wrapped
    inputs = batch(model.config)
    before, expected = snapshot(model), run(model, inputs)
    with pytest.raises(UnsupportedModelError, match=r"encoder\.layer\.1\.attention\.self\.query is a .*ScaledLinear"):
        BetterTransformer.transform(model)
    assert not BetterTransformer.is_converted(model)
    assert_state_dict_identical(model, before)
    torch.testing.assert_close(run(model, inputs).last_hidden_state, expected.last_hidden_state, atol=0, rtol=0)


def test_a_lora_layer_read_by_a_1_0_adapter_is_refused_instead_of_dropped() -> None:
    registry = PluginRegistry(discover=False)
    registry.register(api_1_0_plugin(), "api10")
    model = get_peft_model(build_bert(), LoraConfig(target_modules=["query", "value"], init_lora_weights=False))
    inputs = batch(model.config)
    before, expected = snapshot(model), run(model, inputs)
    with pytest.raises(UnsupportedModelError, match=r"attention\.self\.query is a peft\..*reads as a plain linear"):
        BetterTransformer.transform(model, registry=registry)
    assert not BetterTransformer.is_converted(model)
    assert_state_dict_identical(model, before)
    torch.testing.assert_close(run(model, inputs).last_hidden_state, expected.last_hidden_state, atol=0, rtol=0)

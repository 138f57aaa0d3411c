"""What nox installed is what the registry finds, through real entry points.

Each nox session sets BT_EXPECT_PLUGINS to the plugins it installed (empty for bt-core alone),
so a green session proves entry-point discovery, not an import path.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bt_core import BetterTransformer, UnsupportedModelError
from bt_core.registry import PluginRegistry

EXPECTED = os.environ.get("BT_EXPECT_PLUGINS")
pytestmark = pytest.mark.skipif(EXPECTED is None, reason="run by nox, which sets BT_EXPECT_PLUGINS")


def _expected() -> set[str]:
    return {name for name in (EXPECTED or "").split(",") if name}


def test_the_installed_plugins_are_discovered_through_entry_points() -> None:
    registry = PluginRegistry()
    assert {p.name for p in registry.plugins() if p.source == "entry point"} == _expected()
    assert registry.failures == []


def test_bert_converts_exactly_when_the_encoders_pack_is_installed_and_fails_clearly_otherwise() -> None:
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = BertForSequenceClassification(config).eval()
    if "encoders" not in _expected():
        with pytest.raises(UnsupportedModelError, match=r"'bert'.*pip install bt-plugins-encoders"):
            BetterTransformer.transform(model)
        assert not BetterTransformer.is_converted(model)
        return
    ids = torch.randint(0, config.vocab_size, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.inference_mode():
        expected = model(ids, attention_mask=mask).logits
        actual = BetterTransformer.transform(model)(ids, attention_mask=mask).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)

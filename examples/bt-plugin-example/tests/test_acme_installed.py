"""Once installed, bt finds the plugin through its entry point and converts ACME models."""

import torch

from bt_core import BetterTransformer
from bt_core.registry import PluginRegistry


def test_bt_discovers_the_installed_plugin() -> None:
    registry = PluginRegistry()  # real entry-point discovery
    assert registry.supported_model_types().get("acme-encoder") == "example"
    (info,) = [p for p in registry.plugins() if p.name == "example"]
    assert info.distribution == "bt-plugin-example"


def test_convert_an_acme_model_with_the_discovered_plugin() -> None:
    from bt_plugin_example.plugin import example_config
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(example_config()).eval()
    input_ids = torch.randint(1, 99, (2, 6))
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.inference_mode():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    fast = BetterTransformer.transform(model, registry=PluginRegistry())
    with torch.inference_mode():
        actual = fast(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    keep = attention_mask.bool()
    assert torch.allclose(actual[keep], expected[keep], atol=1e-5)

"""transform/reverse: what a user can rely on, whatever the architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

import bt_core
from bt_core import BetterTransformer, BetterTransformerBaseLayer, BetterTransformerError, UnsupportedModelError
from bt_core.registry import PluginRegistry

from .conftest import make_toy, max_diff_on_tokens, padded_batch
from .toy_model import ToyAdapter, ToyConfig, ToyModel, ToyPlugin

pytestmark = pytest.mark.usefixtures("registry")


def _parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _assert_bit_identical(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype, name
        assert torch.equal(after[name], tensor), name


def test_transform_converts_in_place_and_keeps_no_duplicate_weights() -> None:
    model = make_toy()
    before = _parameter_bytes(model)
    converted = BetterTransformer.transform(model)
    assert converted is model
    assert all(isinstance(layer, ToyAdapter) for layer in model.layers)
    assert _parameter_bytes(model) == before


def test_padded_batch_matches_original_on_valid_tokens() -> None:
    model = make_toy()
    ids, mask = padded_batch([5, 2, 7], 9)
    with torch.inference_mode():
        expected = model(ids, mask).last_hidden_state
        converted = BetterTransformer.transform(model, keep_original_model=True)
        actual = converted(ids, mask).last_hidden_state
    assert actual.shape == expected.shape
    assert max_diff_on_tokens(actual, expected, mask) < 1e-5


def test_keep_original_model_leaves_the_original_untouched_and_shares_nothing() -> None:
    model = make_toy()
    before = _state(model)
    converted = BetterTransformer.transform(model, keep_original_model=True)
    assert converted is not model
    assert not BetterTransformer.is_converted(model)
    _assert_bit_identical(before, model)
    original_storage = {p.data_ptr() for p in model.parameters()}
    assert not original_storage & {p.data_ptr() for p in converted.parameters()}


def test_reverse_restores_the_original_classes_bit_for_bit() -> None:
    model = make_toy(norm_first=True)
    before = _state(model)
    BetterTransformer.reverse(BetterTransformer.transform(model))
    assert not BetterTransformer.is_converted(model)
    assert [type(layer).__name__ for layer in model.layers] == ["ToyLayer"] * 3
    _assert_bit_identical(before, model)


def test_reverse_keeps_what_was_learned_after_conversion() -> None:
    model = BetterTransformer.transform(make_toy())
    with torch.no_grad():
        model.layers[0].in_proj_weight.add_(1.0)
        model.layers[0].out_proj_bias.add_(1.0)
    expected_q = model.layers[0].in_proj_weight[:32].clone()
    expected_o = model.layers[0].out_proj_bias.clone()
    BetterTransformer.reverse(model)
    assert torch.equal(model.layers[0].q.weight, expected_q)
    assert torch.equal(model.layers[0].o.bias, expected_o)


def test_converting_twice_is_a_clear_error() -> None:
    model = BetterTransformer.transform(make_toy())
    with pytest.raises(BetterTransformerError, match=r"already converted.*reverse"):
        BetterTransformer.transform(model)


def test_reversing_an_unconverted_model_is_a_clear_error() -> None:
    with pytest.raises(BetterTransformerError, match="no converted layers"):
        BetterTransformer.reverse(make_toy())


def test_a_failure_midway_leaves_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_toy()
    before = _state(model)
    layers_before = list(model.layers)
    calls = []
    original_init = ToyAdapter.__init__

    def failing_on_second_layer(self: ToyAdapter, layer: nn.Module, config: ToyConfig) -> None:
        calls.append(layer)
        original_init(self, layer, config)
        if len(calls) == 2:
            self.activation = "mish"  # invalid: not an activation bt computes exactly

    monkeypatch.setattr(ToyAdapter, "__init__", failing_on_second_layer)
    with pytest.raises(BetterTransformerError, match=r"layers\.1 \(ToyLayer\).*mish"):
        BetterTransformer.transform(model)
    assert list(model.layers) == layers_before
    assert not BetterTransformer.is_converted(model)
    _assert_bit_identical(before, model)


def test_a_model_nested_inside_another_module_is_found() -> None:
    wrapper = nn.Sequential(make_toy())
    BetterTransformer.transform(wrapper)
    assert isinstance(wrapper[0].layers[0], BetterTransformerBaseLayer)


def test_a_module_without_a_transformers_model_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="contains no transformers model"):
        BetterTransformer.transform(nn.Linear(2, 2))


def test_an_unsupported_model_names_its_type_the_supported_types_and_the_pack() -> None:
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(UnsupportedModelError) as error:
        BetterTransformer.transform(bert)
    message = str(error.value)
    assert "'bert'" in message
    assert "bt-toy" in message
    assert "pip install bt-plugins-encoders" in message
    assert not BetterTransformer.is_converted(bert)


def test_a_refused_model_type_quotes_the_plugins_reason() -> None:
    model = make_toy()
    model.config.model_type = "bt-toy-rotary"
    with pytest.raises(
        UnsupportedModelError, match=r"'bt-toy-rotary' cannot be converted exactly: its attention applies rotary"
    ):
        BetterTransformer.transform(model)


def test_a_renamed_layer_class_is_reported_with_the_classes_found() -> None:
    class RenamedLayer(nn.Module):
        pass

    model = make_toy()
    model.layers = nn.ModuleList([RenamedLayer()])
    with pytest.raises(UnsupportedModelError, match=r"layer class ToyLayer.*RenamedLayer"):
        BetterTransformer.transform(model)


def test_with_no_plugin_installed_conversion_says_so() -> None:
    from bt_core.registry import set_default_registry

    previous = set_default_registry(PluginRegistry(discover=False))
    try:
        with pytest.raises(UnsupportedModelError, match="no bt plugin is installed"):
            BetterTransformer.transform(make_toy())
    finally:
        set_default_registry(previous)


def test_save_pretrained_refuses_until_reversed_then_writes_a_plain_checkpoint(tmp_path) -> None:
    model = BetterTransformer.transform(make_toy())
    with pytest.raises(BetterTransformerError, match=r"reverse\(model\)` first"):
        model.save_pretrained(tmp_path / "converted")
    BetterTransformer.reverse(model)
    model.save_pretrained(tmp_path / "reversed")
    reloaded = ToyModel.from_pretrained(tmp_path / "reversed")
    _assert_bit_identical(_state(model), reloaded)


def test_an_adapter_crash_names_the_adapter_the_layer_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: ToyAdapter, layer: nn.Module, config: ToyConfig) -> None:
        raise AttributeError("'ToyLayer' object has no attribute 'query'")

    monkeypatch.setattr(ToyAdapter, "__init__", broken)
    with pytest.raises(
        BetterTransformerError, match=r"ToyAdapter from plugin 'toy' failed on layer layers\.0.*upgrade the plugin"
    ):
        BetterTransformer.transform(make_toy())


@pytest.mark.parametrize("strategy", ["fused", "packed"])
@pytest.mark.parametrize("pads_every_output", [False, True])
def test_only_the_last_layer_pads_back_unless_the_adapter_asks_for_every_layer(
    monkeypatch: pytest.MonkeyPatch, strategy: str, pads_every_output: bool
) -> None:
    from bt_core import force_strategy

    monkeypatch.setattr(ToyAdapter, "pads_every_output", pads_every_output)
    model = BetterTransformer.transform(make_toy())
    shapes = []
    for layer in model.layers:
        layer.register_forward_hook(
            lambda module, args, output: shapes.append(output.shape if not output.is_nested else "nested")
        )
    ids, mask = padded_batch([5, 2, 7], 9)
    with torch.inference_mode(), force_strategy(strategy):
        model(ids, mask)
    padded = torch.Size([3, 9, 32])
    assert shapes[-1] == padded
    if pads_every_output:
        assert shapes == [padded] * 3
    else:
        assert padded not in shapes[:-1], "inner layers pass packed or nested tokens on"


def test_a_converted_model_can_be_deep_copied_and_pickled(tmp_path) -> None:
    import copy

    model = BetterTransformer.transform(make_toy())
    ids, mask = padded_batch([5, 2, 7], 9)
    torch.save(model, tmp_path / "model.pt")
    for clone in (copy.deepcopy(model), torch.load(tmp_path / "model.pt", weights_only=False)):
        with torch.inference_mode():
            torch.testing.assert_close(clone(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)


class _DoubledBiasAdapter(ToyAdapter):
    """Derives out_proj_bias as 2 * o.bias (and halves out_proj_weight to compensate), as a fold would."""

    with_inverse = True

    def __init__(self, layer: nn.Module, config: ToyConfig) -> None:
        super().__init__(layer, config)
        inverse = (lambda b: (b / 2,)) if self.with_inverse else None
        inverse_w = (lambda w: (w * 2,)) if self.with_inverse else None
        self.out_proj_bias = self.derive(layer.o.bias * 2, layer.o.bias, inverse=inverse)
        self.out_proj_weight = self.derive(layer.o.weight / 2, layer.o.weight, inverse=inverse_w)

    def validate_bettertransformer(self) -> None:  # the toy's math is off by design here
        pass


@pytest.mark.parametrize("with_inverse", [True, False])
def test_reverse_of_derived_parameters(monkeypatch: pytest.MonkeyPatch, with_inverse: bool) -> None:
    monkeypatch.setattr(_DoubledBiasAdapter, "with_inverse", with_inverse)
    model = make_toy()
    before = _state(model)

    class Plugin(ToyPlugin):
        @bt_core.hookimpl
        def bt_register_layers(self) -> list[bt_core.LayerMapping]:
            return [bt_core.LayerMapping("bt-toy", "ToyLayer", _DoubledBiasAdapter)]

    registry = PluginRegistry(discover=False)
    registry.register(Plugin(), "doubled")
    BetterTransformer.transform(model, registry=registry)
    BetterTransformer.reverse(BetterTransformer.transform(BetterTransformer.reverse(model), registry=registry))
    _assert_bit_identical(before, model)  # untouched derived parameters come back bit for bit

    BetterTransformer.transform(model, registry=registry)
    with torch.no_grad():
        model.layers[1].out_proj_bias.add_(2.0)  # as an optimizer step would
    if not with_inverse:
        with pytest.raises(
            BetterTransformerError, match=r"layers\.1 \(ToyLayer\).*out_proj_bias changed after conversion"
        ):
            BetterTransformer.reverse(model)
        assert all(isinstance(layer, _DoubledBiasAdapter) for layer in model.layers), "nothing was reversed"
        return
    BetterTransformer.reverse(model)
    torch.testing.assert_close(model.layers[1].o.bias, before["layers.1.o.bias"] + 1.0)
    assert torch.equal(model.layers[0].o.bias, before["layers.0.o.bias"])


class _FirstLayerOnlyAdapter(ToyAdapter):
    @classmethod
    def converts(cls, layer: nn.Module, config: ToyConfig) -> bool:
        return getattr(layer, "is_first_for_test", False)


def test_an_adapter_may_leave_layers_of_its_class_unconverted_and_the_rest_still_matches() -> None:
    """What a seq2seq pack needs: decoder blocks share the encoder's class and stay the model's own."""
    from bt_core import LayerMapping, hookimpl

    class Plugin:
        @hookimpl
        def bt_plugin_api_version(self) -> str:
            return "1.1"

        @hookimpl
        def bt_register_layers(self) -> list[LayerMapping]:
            return [LayerMapping("bt-toy", "ToyLayer", _FirstLayerOnlyAdapter)]

    model = make_toy()
    model.layers[0].is_first_for_test = True
    ids, mask = padded_batch([7, 2, 5], 9)
    with torch.inference_mode():
        expected = model(ids, mask).last_hidden_state
    registry = PluginRegistry(discover=False)
    registry.register(Plugin(), "first-only")
    converted = BetterTransformer.transform(model, keep_original_model=True, registry=registry)
    assert isinstance(converted.layers[0], _FirstLayerOnlyAdapter)
    assert not any(isinstance(layer, BetterTransformerBaseLayer) for layer in list(converted.layers)[1:])
    with torch.inference_mode():
        actual = converted(ids, mask).last_hidden_state
    assert max_diff_on_tokens(actual, expected, mask) < 1e-5

"""The conformance kit fails on adapters that are wrong (the packs run it in tests/encoders and
tests/vision, so each pack-alone nox session exercises it).

A kit that cannot fail is worthless: this module breaks a correct BERT adapter in the ways
adapters really go wrong (swapped norms, a forgotten bias, q and k swapped, weights changed in
place, a wrong layer norm epsilon, a wrong layer class, a wrong entry point) and checks that the
kit's failure names the model type and the difference.
"""

from __future__ import annotations

import textwrap
import warnings
from typing import Any

import pytest
import torch
from bt_plugins_encoders.adapters import BertLayerAdapter
from transformers import BertConfig, BertModel

from bt_core import LayerMapping, hookimpl
from bt_core.registry import set_default_registry
from bt_core.testing import AdapterConformance

pytest_plugins = ["pytester"]


# -- adapters broken on purpose ------------------------------------------------------------------


def tiny_bert() -> BertConfig:
    return BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=99,
        max_position_embeddings=64,
    )


class SwappedNorms(BertLayerAdapter):
    def __init__(self, layer: Any, config: Any) -> None:
        super().__init__(layer, config)
        self.norm1_weight, self.norm2_weight = self.norm2_weight, self.norm1_weight
        self.norm1_bias, self.norm2_bias = self.norm2_bias, self.norm1_bias


class ForgottenBias(BertLayerAdapter):
    def __init__(self, layer: Any, config: Any) -> None:
        super().__init__(layer, config)
        self.out_proj_bias = self.zeros(self.embed_dim, like=self.out_proj_weight)


class SwappedQueryKey(BertLayerAdapter):
    def __init__(self, layer: Any, config: Any) -> None:
        super().__init__(layer, config)
        attention = layer.attention.self
        self.in_proj_weight = self.fuse(attention.key.weight, attention.query.weight, attention.value.weight)


class ChangesWeightsInPlace(BertLayerAdapter):
    """Folds a scale into the original parameter in place instead of with ``self.derive``."""

    def __init__(self, layer: Any, config: Any) -> None:
        with torch.no_grad():
            layer.output.dense.weight.mul_(1.5)
        super().__init__(layer, config)


class WrongEpsilon(BertLayerAdapter):
    """LayerNorm epsilon 1e-5 (PyTorch's default) where BERT uses 1e-12: ~1e-5 off, float32's own noise."""

    def __init__(self, layer: Any, config: Any) -> None:
        super().__init__(layer, config)
        self.norm1_eps = self.norm2_eps = 1e-5


class WrongActivation(BertLayerAdapter):
    def __init__(self, layer: Any, config: Any) -> None:
        super().__init__(layer, config)
        self.activation = "relu"


class Float32OnlyBert(BertModel):
    """An example model that refuses float64, as models with float32-only custom ops do."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.dtype == torch.float64:
            raise RuntimeError("expected scalar type Float but found Double")
        return super().forward(*args, **kwargs)


class BertPlugin:
    """A plugin mapping tiny BERT to ``adapter``, optionally under a wrong layer class name."""

    def __init__(self, adapter: type, layer_class_name: str = "BertLayer", model_class: Any = None) -> None:
        self.adapter = adapter
        self.layer_class_name = layer_class_name
        self.model_class = model_class

    @hookimpl
    def bt_plugin_api_version(self) -> str:
        return "1.0"

    @hookimpl
    def bt_register_layers(self) -> list[LayerMapping]:
        return [
            LayerMapping(
                "bert",
                self.layer_class_name,
                self.adapter,
                example_config=tiny_bert,
                example_model_class=self.model_class,
            )
        ]


def run_check(adapter: type, check: str, layer_class_name: str = "BertLayer", model_class: Any = None) -> None:
    """Run one kit check on a BERT plugin using ``adapter``, as pytest would."""

    class Kit(AdapterConformance):
        plugin = BertPlugin(adapter, layer_class_name, model_class)

    kit = Kit()
    (mapping,) = Kit._bt_mappings()
    registry = Kit._bt_new_registry()
    previous = set_default_registry(registry)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*taking the reference path.*")
            method = getattr(kit, check)
            if "_bt_registry" in method.__code__.co_varnames:
                method(mapping, registry)
            else:
                method(mapping)
    finally:
        set_default_registry(previous)


INFERENCE_CHECKS = [
    "test_unpadded_batch_matches",
    "test_padded_batch_matches",
    "test_left_padded_batch_matches",
    "test_fused_kernel_matches",
    "test_classification_head_matches",
    "test_reference_path_matches_with_gradients",
    "test_requested_hidden_states_match",
]


@pytest.mark.parametrize("check", [*INFERENCE_CHECKS, "test_reverse_is_bit_identical", "test_converts_and_validates"])
def test_a_correct_adapter_passes(check: str) -> None:
    run_check(BertLayerAdapter, check)  # the control: the breakages below are the only difference


@pytest.mark.parametrize("adapter", [SwappedNorms, ForgottenBias, SwappedQueryKey, ChangesWeightsInPlace])
@pytest.mark.parametrize("check", INFERENCE_CHECKS)
def test_kit_catches_a_wrong_adapter(adapter: type, check: str) -> None:
    with pytest.raises(pytest.fail.Exception) as failure:
        run_check(adapter, check)
    message = str(failure.value)
    assert "model type 'bert'" in message
    assert "max abs diff" in message
    assert adapter.__name__ in message  # names the adapter under test


@pytest.mark.parametrize("check", ["test_unpadded_batch_matches", "test_padded_batch_matches"])
def test_kit_catches_a_layer_norm_epsilon_of_1e_5_for_1e_12(check: str) -> None:
    """~1e-5 off: within float32 noise, so the kit compares in float64 with a tolerance far below it."""
    with pytest.raises(pytest.fail.Exception) as failure:
        run_check(WrongEpsilon, check)
    message = str(failure.value)
    assert "in float64" in message and "max abs diff" in message and "WrongEpsilon" in message


def test_a_model_that_cannot_run_in_float64_is_compared_in_float32_and_says_so() -> None:
    run_check(BertLayerAdapter, "test_padded_batch_matches", model_class=Float32OnlyBert)
    with pytest.raises(pytest.fail.Exception) as failure:
        run_check(SwappedNorms, "test_padded_batch_matches", model_class=Float32OnlyBert)
    message = str(failure.value)
    assert "in float32 (the example model cannot run in float64 (RuntimeError: expected scalar type" in message
    assert "atol=1e-05" in message


def test_kit_catches_an_activation_the_layer_does_not_use() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"max abs diff"):
        run_check(WrongActivation, "test_padded_batch_matches")


def test_kit_catches_weights_changed_in_place_on_reverse() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"output\.dense\.weight is not bit-identical"):
        run_check(ChangesWeightsInPlace, "test_reverse_is_bit_identical")


def test_kit_catches_a_wrong_layer_class_name() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"no module of class 'BertLayr'.*BertLayer"):
        run_check(BertLayerAdapter, "test_layer_class_is_in_the_example_model", layer_class_name="BertLayr")


def test_a_type_without_a_classification_head_is_skipped_with_the_reason() -> None:
    class Kit(AdapterConformance):
        plugin = "bt_plugins_vision.plugin"
        model_types = ("vit_mae",)

    with pytest.raises(pytest.skip.Exception, match=r"'vit_mae': transformers has no sequence- or image-classific"):
        Kit().test_classification_head_matches(Kit._bt_mappings()[0], Kit._bt_new_registry())


# -- the entry point bt discovers -----------------------------------------------------------------


def entry_point_check(plugin: Any, plugin_name: str | None) -> None:
    class Kit(AdapterConformance):
        pass

    Kit.plugin, Kit.plugin_name = plugin, plugin_name
    Kit().test_plugin_is_found_through_its_entry_point()


def test_the_installed_entry_point_of_a_pack_passes() -> None:
    entry_point_check("bt_plugins_encoders.plugin", "encoders")


def test_without_plugin_name_the_entry_point_is_not_checked_and_the_skip_says_what_to_set() -> None:
    with pytest.raises(pytest.skip.Exception, match=r'sets no plugin_name.*entry-points\."bt_core\.plugins"\]'):
        entry_point_check(BertPlugin(BertLayerAdapter), None)


def test_a_plugin_name_no_distribution_declares_fails() -> None:
    with pytest.raises(pytest.fail.Exception) as failure:
        entry_point_check(BertPlugin(BertLayerAdapter), "encoder")  # a typo for "encoders"
    message = str(failure.value)
    assert "no installed distribution declares an entry point named 'encoder' in group 'bt_core.plugins'" in message
    assert "encoders" in message  # lists the names that are installed


def test_an_entry_point_that_loads_another_object_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"entry point 'encoders' = 'bt_plugins_encoders.plugin'.*loads"):
        entry_point_check(BertPlugin(BertLayerAdapter), "encoders")


# -- the kit as plugin authors use it: a subclass in their own test module --------------------------

PLUGIN_SOURCE = """
from transformers import BertConfig
from bt_core import LayerMapping, hookimpl

ADAPTER = "bt_plugins_encoders.adapters:BertLayerAdapter"


def tiny():
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99)


class Good:
    @hookimpl
    def bt_plugin_api_version(self):
        return "1.0"

    @hookimpl
    def bt_register_layers(self):
        return [LayerMapping("bert", "BertLayer", ADAPTER, example_config=tiny)]


class NoExample(Good):
    @hookimpl
    def bt_register_layers(self):
        return [LayerMapping("bert", "BertLayer", ADAPTER)]


class Empty(Good):
    @hookimpl
    def bt_register_layers(self):
        return []


class Undeclared:
    @hookimpl
    def bt_register_layers(self):
        return [LayerMapping("bert", "BertLayer", ADAPTER, example_config=tiny)]
"""


def run_kit_on(pytester: pytest.Pytester, plugin_class: str) -> pytest.RunResult:
    pytester.makepyfile(kit_plugins=PLUGIN_SOURCE)
    pytester.makepyfile(
        test_plugin=textwrap.dedent(
            f"""
            import kit_plugins
            from bt_core.testing import AdapterConformance

            class TestPlugin(AdapterConformance):
                plugin = kit_plugins.{plugin_class}()  # in-process only: no plugin_name, no entry point
            """
        )
    )
    pytester.syspathinsert()
    return pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-rA")


def test_a_subclass_is_collected_once_per_mapping(pytester: pytest.Pytester) -> None:
    result = run_kit_on(pytester, "Good")
    result.assert_outcomes(passed=12, skipped=1)  # the entry-point check skips: no plugin_name
    result.stdout.fnmatch_lines(["*test_padded_batch_matches?bert?*"])


def test_a_mapping_without_example_config_fails_loudly(pytester: pytest.Pytester) -> None:
    result = run_kit_on(pytester, "NoExample")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 10 and outcomes.get("skipped") == 1  # only the entry-point check
    result.stdout.fnmatch_lines(["*has no example_config*Add `example_config=`*"])


def test_a_plugin_without_mappings_fails(pytester: pytest.Pytester) -> None:
    result = run_kit_on(pytester, "Empty")
    assert result.parseoutcomes().get("failed", 0) >= 8
    result.stdout.fnmatch_lines(["*registers no layer mappings*"])


def test_a_plugin_without_api_declaration_fails(pytester: pytest.Pytester) -> None:
    result = run_kit_on(pytester, "Undeclared")
    assert result.parseoutcomes().get("failed", 0) >= 1
    result.stdout.fnmatch_lines(["*does not declare the plugin API*bt_plugin_api_version*"])


# -- the pytest-free helpers -----------------------------------------------------------------------


def test_zero_dropout_reaches_sub_configs() -> None:
    from transformers import CLIPConfig

    from bt_core.testing.examples import zero_dropout

    config = CLIPConfig(text_config={"dropout": 0.3, "attention_dropout": 0.2}, vision_config={"dropout": 0.1})
    zero_dropout(config)
    assert config.text_config.dropout == 0.0 and config.text_config.attention_dropout == 0.0
    assert config.vision_config.dropout == 0.0


def test_default_text_inputs_are_right_padded_with_varied_lengths() -> None:
    from bt_core.testing.examples import default_inputs

    inputs = default_inputs(tiny_bert(), 3)
    assert inputs["attention_mask"].sum(dim=1).tolist() == [8, 5, 2]
    for row in inputs["attention_mask"]:
        length = int(row.sum())
        assert row[:length].all() and not row[length:].any()


def test_default_vision_inputs() -> None:
    from transformers import ViTConfig

    from bt_core.testing.examples import default_inputs

    inputs = default_inputs(ViTConfig(image_size=32, patch_size=8, num_channels=3), 2)
    assert tuple(inputs["pixel_values"].shape) == (2, 3, 32, 32)


def test_inputs_that_cannot_be_guessed_ask_for_example_inputs() -> None:
    from transformers import PretrainedConfig

    from bt_core.testing.examples import ExampleError, example_inputs

    mapping = LayerMapping("odd", "OddLayer", BertLayerAdapter)
    with pytest.raises(ExampleError, match=r"model type .odd.*example_inputs="):
        example_inputs(mapping, PretrainedConfig(), 2)


def test_compare_outputs_reads_well() -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from bt_core.testing.compare import compare_outputs

    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    hidden = torch.zeros(2, 3, 4)
    pooled = torch.zeros(2, 4)
    expected = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)
    garbage_in_padding = hidden.clone()
    garbage_in_padding[1, 2] = 100.0
    off = pooled.clone()
    off[1, 3] = 0.5
    diffs = {d.name: d for d in compare_outputs(expected, BaseModelOutputWithPooling(garbage_in_padding, off), mask)}
    assert diffs["last_hidden_state"].max_abs_diff == 0.0 and diffs["last_hidden_state"].compared == "valid tokens"
    assert diffs["pooler_output"].describe() == "pooler_output: max abs diff 0.5 (all) at index (1, 3)"
    (wrong_shape,) = [d for d in compare_outputs(hidden, hidden[:, :2], mask)]
    assert not wrong_shape.within(1.0) and "has shape (2, 2, 4), the original (2, 3, 4)" in wrong_shape.describe()
    nan = hidden.clone()
    nan[0, 0, 0] = float("nan")
    (with_nan,) = compare_outputs(hidden, nan, mask)
    assert not with_nan.within(1.0) and "NaN at index (0, 0, 0)" in with_nan.describe()


def test_position_zero_is_compared_where_left_padding_puts_a_pad_token() -> None:
    """Heads read position 0; in a left-padded row it is padding the original computes, so it counts."""
    from bt_core.testing.compare import compare_with_position_zero

    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    expected = torch.zeros(2, 3, 4)
    expected[1, 0] = 1.0  # the original's hidden state at the pad token in position 0
    zeroed = torch.zeros(2, 3, 4)  # a converted model that writes zeros at padding
    diffs = {d.name: d for d in compare_with_position_zero(expected, zeroed, mask)}
    assert diffs["output"].within(0.0) and diffs["output"].compared == "valid tokens"
    assert diffs["output at position 0"].max_abs_diff == 1.0
    assert diffs["output at position 0"].compared.startswith("position 0: padding here")


def test_left_padded_moves_padding_and_every_per_token_input_together() -> None:
    from bt_core.testing.examples import left_padded

    inputs = {
        "input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "bbox": torch.arange(24).reshape(2, 3, 4),
        "pixel_values": torch.ones(2, 5),
    }
    moved = left_padded(inputs)
    assert moved is not None
    assert moved["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert moved["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert torch.equal(moved["bbox"][1], inputs["bbox"][1][[2, 0, 1]])
    assert moved["pixel_values"] is inputs["pixel_values"]
    assert left_padded({**inputs, "attention_mask": torch.ones(2, 3)}) is None  # nothing to move

"""``AdapterConformance``: the checks every bt adapter must pass, as a pytest class to subclass."""

from __future__ import annotations

import copy
import importlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from .._engine import force_strategy
from ..convert import BetterTransformer
from ..hookspecs import PLUGIN_API_VERSION
from ..layer import FUSED_PARAMETERS, BetterTransformerBaseLayer
from ..mapping import LayerMapping
from ..registry import PluginRegistry, set_default_registry
from .examples import (
    ExampleError,
    OutputDiff,
    _token_keep,
    build_example_model,
    compare_outputs,
    example_inputs,
    flatten_outputs,
)

__all__ = ["AdapterConformance"]


@dataclass(frozen=True)
class _Unusable:
    """Stands in for the mappings when the plugin cannot be registered or registers none."""

    reason: str


def _resolve_plugin(plugin: Any) -> Any:
    if isinstance(plugin, str):
        return importlib.import_module(plugin)
    return plugin


class AdapterConformance:
    """Subclass as ``class TestMyPlugin(AdapterConformance): plugin = my_plugin_module``.

    Every ``test_*`` method that takes ``mapping`` runs once per layer mapping the plugin registers,
    each in a fresh ``PluginRegistry(discover=False)`` holding only this plugin, installed as the
    default registry for the test and restored afterwards. The example model is built from the
    mapping's ``example_config`` (required), seeded, in float32 and eval mode, with every dropout
    set to 0.0 and every parameter perturbed by seeded noise (so that a swapped norm or a forgotten
    bias shows). The checks:

    - the layer class named in the mapping exists in the example model;
    - the conversion replaces every such layer with the mapping's adapter and each one passes
      ``validate_bettertransformer()``;
    - a right-padded batch and an unpadded one give the original outputs on the valid tokens, with
      the original shapes (within ``atol``), and so does the fused kernel when it can run the layer;
    - the reference path (train mode, autograd) matches too, every fused parameter that requires a
      gradient gets one, and the gradients equal the original model's;
    - requested hidden states match;
    - ``reverse`` gives a ``state_dict`` bit-identical to the original.

    Outputs are compared on the positions the inputs' ``attention_mask`` keeps when an output is per
    token (its second dimension is the mask's length, or longer for text-then-image models like
    ViLT); other outputs are compared whole. A model whose mask is not per token (audio masks in
    sample space) should give ``example_inputs`` without padding.

    Class attributes to set: ``plugin`` (a module or object with hookimpls, or its import path);
    optionally ``plugin_name``, ``model_types`` (test only these), ``atol``, ``grad_atol``,
    ``batch_size``, ``seed``, ``perturb``.
    """

    plugin: ClassVar[Any] = None
    plugin_name: ClassVar[str | None] = None
    model_types: ClassVar[Sequence[str] | None] = None
    atol: ClassVar[float] = 1e-5
    grad_atol: ClassVar[float] = 1e-4
    batch_size: ClassVar[int] = 3
    seed: ClassVar[int] = 0
    perturb: ClassVar[float] = 0.05

    # -- collection -------------------------------------------------------------------------------

    @classmethod
    def _bt_plugin(cls) -> tuple[Any, str]:
        if cls.plugin is None:
            raise pytest.UsageError(
                f"{cls.__name__} subclasses AdapterConformance but sets no `plugin`; set "
                "`plugin = your_package.bt_plugin` (the module holding your hookimpls)."
            )
        plugin = _resolve_plugin(cls.plugin)
        name = cls.plugin_name or getattr(plugin, "__name__", None) or type(plugin).__name__
        return plugin, name

    @classmethod
    def _bt_new_registry(cls) -> PluginRegistry:
        plugin, name = cls._bt_plugin()
        registry = PluginRegistry(discover=False)
        registry.register(plugin, name)
        return registry

    @classmethod
    def _bt_mappings(cls) -> list[LayerMapping | _Unusable]:
        _, name = cls._bt_plugin()
        try:
            registry = cls._bt_new_registry()
            mappings = [m.mapping for m in registry.all_mappings()]
            failures = list(registry.failures)
        except Exception as exc:
            return [_Unusable(f"plugin {name!r} cannot be registered: {type(exc).__name__}: {exc}")]
        if failures:
            return [_Unusable("; ".join(f.describe() for f in failures))]
        if cls.model_types is not None:
            unknown = sorted(set(cls.model_types) - {m.model_type for m in mappings})
            if unknown:
                return [_Unusable(f"plugin {name!r} maps no layer of model type(s) {unknown} listed in model_types")]
            mappings = [m for m in mappings if m.model_type in cls.model_types]
        if not mappings:
            return [_Unusable(f"plugin {name!r} registers no layer mappings (bt_register_layers returned none)")]
        return list(mappings)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "mapping" not in metafunc.fixturenames:
            return
        mappings = type(self)._bt_mappings()
        ids = []
        for mapping in mappings:
            if isinstance(mapping, _Unusable):
                ids.append("unusable-plugin")
            else:
                same_type = sum(
                    1 for m in mappings if isinstance(m, LayerMapping) and m.model_type == mapping.model_type
                )
                ids.append(mapping.model_type if same_type == 1 else f"{mapping.model_type}-{mapping.layer_class_name}")
        metafunc.parametrize("mapping", mappings, ids=ids)

    @pytest.fixture(autouse=True)
    def _bt_registry(self) -> Iterator[PluginRegistry]:
        """A fresh registry with only this plugin, the process default for the duration of a test."""
        try:
            registry = type(self)._bt_new_registry()
        except Exception:  # reported by every check, through the _Unusable mapping
            yield None  # type: ignore[misc]
            return
        previous = set_default_registry(registry)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*taking the reference path.*")
                yield registry
        finally:
            set_default_registry(previous)

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _usable(mapping: Any) -> LayerMapping:
        if isinstance(mapping, _Unusable):
            pytest.fail(mapping.reason, pytrace=False)
        return mapping

    def _build(self, mapping: Any) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
        mapping = self._usable(mapping)
        try:
            model, config = build_example_model(mapping, seed=self.seed, perturb=self.perturb)
            inputs = example_inputs(mapping, config, self.batch_size, seed=self.seed)
        except ExampleError as exc:
            problem = str(exc)
        else:
            return model, config, inputs
        pytest.fail(problem, pytrace=False)

    def _convert(self, model: torch.nn.Module, mapping: LayerMapping, registry: PluginRegistry) -> torch.nn.Module:
        try:
            return BetterTransformer.transform(model, registry=registry)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        pytest.fail(
            f"model type {mapping.model_type!r}: BetterTransformer.transform failed on the example model: {problem}",
            pytrace=False,
        )

    def _assert_close(self, mapping: LayerMapping, what: str, diffs: list[OutputDiff], atol: float) -> None:
        if not diffs:
            pytest.fail(f"model type {mapping.model_type!r}, {what}: the model returned no tensor to compare")
        bad = [d for d in diffs if not d.within(atol)]
        if bad:
            lines = "\n".join(f"  {d.describe()}" for d in bad)
            pytest.fail(
                f"model type {mapping.model_type!r} (adapter {_adapter_name(mapping)}), {what}: the converted "
                f"model differs from the original beyond atol={atol:g}:\n{lines}",
                pytrace=False,
            )

    @staticmethod
    def _converted_layers(model: torch.nn.Module, mapping: LayerMapping) -> dict[str, BetterTransformerBaseLayer]:
        return {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, BetterTransformerBaseLayer)
            and module.bt_layer_name.endswith(f"({mapping.layer_class_name})")
        }

    def _check_inference(
        self, mapping: Any, registry: PluginRegistry, *, padded: bool | None, strategy: str | None = None
    ) -> None:
        model, _, inputs = self._build(mapping)
        mask = inputs.get("attention_mask")
        if padded is None:
            padded = mask is not None
        if padded and mask is None:
            pytest.skip(
                f"model type {mapping.model_type!r}: the example inputs have no attention_mask (nothing to pad)"
            )
        if not padded and mask is not None:
            inputs["attention_mask"] = torch.ones_like(mask)
        elif padded and bool(mask.bool().all()):
            pytest.fail(
                f"model type {mapping.model_type!r}: the example inputs' attention_mask pads nothing; "
                "example_inputs should right-pad some rows so the padded path is tested."
            )
        with torch.inference_mode():
            expected = _call(model, inputs, self.seed)
        converted = self._convert(model, mapping, registry)
        if strategy == "fused":
            for name, layer in self._converted_layers(converted, mapping).items():
                if not layer.kernel_computes_activation:
                    pytest.skip(f"{name}: the fused kernel does not compute activation {layer.activation!r}")
                if int(layer.num_heads) % 2 == 1:
                    pytest.skip(f"{name}: the fused kernel does not take an odd head count ({layer.num_heads})")
        with torch.inference_mode(), force_strategy(strategy):
            try:
                actual = _call(converted, inputs, self.seed)
                problem = None
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None and strategy and f"strategy {strategy!r} was forced, but" in problem:
            pytest.skip(
                f"model type {mapping.model_type!r}: the {strategy} strategy cannot run these inputs: {problem}"
            )
        if problem is not None:
            pytest.fail(
                f"model type {mapping.model_type!r}: the converted model raised {problem}"
                + (f" (strategy {strategy!r} forced)" if strategy else ""),
                pytrace=False,
            )
        what = ("a right-padded batch" if padded else "an unpadded batch") + (
            f", {strategy} kernel" if strategy else ""
        )
        self._assert_close(
            mapping, f"{what} (inference)", compare_outputs(expected, actual, inputs.get("attention_mask")), self.atol
        )

    # -- the checks ------------------------------------------------------------------------------

    def test_plugin_declares_a_compatible_api(self) -> None:
        plugin, name = self._bt_plugin()
        declare = getattr(plugin, "bt_plugin_api_version", None)
        assert declare is not None, (
            f"plugin {name!r} has no bt_plugin_api_version hookimpl; add one returning {PLUGIN_API_VERSION!r}."
        )
        declared = str(declare())
        assert declared.split(".")[0] == PLUGIN_API_VERSION.split(".")[0], (
            f"plugin {name!r} declares plugin API {declared}; this bt-core implements {PLUGIN_API_VERSION}."
        )

    def test_mapping_is_well_formed(self, mapping: Any) -> None:
        mapping = self._usable(mapping)
        adapter = mapping.load_adapter()
        assert isinstance(adapter, type) and issubclass(adapter, BetterTransformerBaseLayer), (
            f"model type {mapping.model_type!r}: the adapter {adapter!r} is not a "
            "bt_core.BetterTransformerBaseLayer subclass"
        )
        if mapping.example_config is None:
            self._build(mapping)  # fails with the message saying what to add

    def test_layer_class_is_in_the_example_model(self, mapping: Any) -> None:
        model, _, _ = self._build(mapping)
        classes = {type(m).__name__ for m in model.modules()}
        if mapping.layer_class_name not in classes:
            layer_like = sorted(c for c in classes if "Layer" in c or "Block" in c)
            pytest.fail(
                f"model type {mapping.model_type!r}: the example model ({type(model).__name__}) has no module of "
                f"class {mapping.layer_class_name!r}; layer-like classes in it: {', '.join(layer_like) or 'none'}. "
                "Fix layer_class_name, or example_model_class if the layer lives in another model class.",
                pytrace=False,
            )

    def test_converts_and_validates(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, _ = self._build(mapping)
        originals = {n for n, m in model.named_modules() if type(m).__name__ == mapping.layer_class_name}
        converted = self._convert(model, mapping, _bt_registry)
        layers = self._converted_layers(converted, mapping)
        missing = sorted(originals - set(layers))
        assert not missing, f"model type {mapping.model_type!r}: layers left unconverted: {missing}"
        adapter = mapping.load_adapter()
        for name, layer in layers.items():
            assert isinstance(layer, adapter), (
                f"model type {mapping.model_type!r}: {name} became a {type(layer).__name__}, not {adapter.__name__}"
            )
            layer.validate_bettertransformer()
            for attr in FUSED_PARAMETERS:
                value = getattr(layer, attr)
                assert isinstance(value, torch.nn.Parameter), (
                    f"model type {mapping.model_type!r}: {name}.{attr} is a {type(value).__name__}, not an "
                    "nn.Parameter; assign the original parameter, or use self.fuse / self.zeros / self.derive."
                )
                assert value.device.type != "meta", (
                    f"model type {mapping.model_type!r}: {name}.{attr} is on the meta device"
                )

    def test_unpadded_batch_matches(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        self._check_inference(mapping, _bt_registry, padded=False)

    def test_padded_batch_matches(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        self._check_inference(mapping, _bt_registry, padded=True)

    def test_fused_kernel_matches(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        self._check_inference(mapping, _bt_registry, padded=None, strategy="fused")

    def test_reference_path_matches_with_gradients(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, inputs = self._build(mapping)
        mapping = self._usable(mapping)
        reference = copy.deepcopy(model).train()
        converted = self._convert(model, mapping, _bt_registry).train()
        expected = _call(reference, inputs, self.seed)
        actual = _call(converted, inputs, self.seed)
        mask = inputs.get("attention_mask")
        self._assert_close(
            mapping, "the reference path (train mode, autograd)", compare_outputs(expected, actual, mask), self.atol
        )

        _loss(expected, mask, self.seed).backward()
        _loss(actual, mask, self.seed).backward()
        layers = self._converted_layers(converted, mapping)
        problems = []
        for name, layer in layers.items():
            for attr in FUSED_PARAMETERS:
                value = getattr(layer, attr)
                if value.requires_grad and value.grad is None:
                    problems.append(f"{name}.{attr} requires grad but got no gradient")
                elif value.grad is not None and not bool(torch.isfinite(value.grad).all()):
                    problems.append(f"{name}.{attr} got a non-finite gradient")
            shared, sliced, _derived = layer._bt_restore_plan  # derived (folded) grads differ by design
            original = reference.get_submodule(name)
            for pname, attr in shared.items():
                problems += _grad_diff(
                    f"{name}.{pname} (as {attr})",
                    original.get_parameter(pname).grad,
                    getattr(layer, attr).grad,
                    self.grad_atol,
                )
            for pname, (attr, start, end) in sliced.items():
                grad = getattr(layer, attr).grad
                problems += _grad_diff(
                    f"{name}.{pname} (as {attr}[{start}:{end}])",
                    original.get_parameter(pname).grad,
                    None if grad is None else grad[start:end],
                    self.grad_atol,
                )
        inside = tuple(f"{name}." for name in layers)
        reference_params = dict(reference.named_parameters())
        for pname, parameter in converted.named_parameters():
            if pname.startswith(inside) or pname not in reference_params:
                continue
            problems += _grad_diff(pname, reference_params[pname].grad, parameter.grad, self.grad_atol)
        if problems:
            pytest.fail(
                f"model type {mapping.model_type!r} (adapter {_adapter_name(mapping)}), gradients of the reference "
                "path differ from the original model's:\n  " + "\n  ".join(problems[:20]),
                pytrace=False,
            )

    def test_requested_hidden_states_match(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, inputs = self._build(mapping)
        mapping = self._usable(mapping)
        with torch.inference_mode():
            try:
                expected = _call(model, {**inputs, "output_hidden_states": True}, self.seed)
            except TypeError:
                pytest.skip(f"model type {mapping.model_type!r}: the example model takes no output_hidden_states")
        if not any(".hidden_states" in n or n.startswith("hidden_states") for n, _ in flatten_outputs(expected)):
            pytest.skip(f"model type {mapping.model_type!r}: the example model returns no hidden_states")
        converted = self._convert(model, mapping, _bt_registry)
        with torch.inference_mode():
            actual = _call(converted, {**inputs, "output_hidden_states": True}, self.seed)
        self._assert_close(
            mapping,
            "output_hidden_states=True",
            compare_outputs(expected, actual, inputs.get("attention_mask")),
            self.atol,
        )

    def test_reverse_is_bit_identical(self, mapping: Any, _bt_registry: PluginRegistry) -> None:
        model, _, inputs = self._build(mapping)
        mapping = self._usable(mapping)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        classes = {n: type(m) for n, m in model.named_modules()}
        converted = self._convert(model, mapping, _bt_registry)
        with torch.inference_mode():
            converted(**inputs)
        restored = BetterTransformer.reverse(converted)
        after = restored.state_dict()
        assert list(after) == list(before), (
            f"model type {mapping.model_type!r}: reverse() changed the state_dict keys: "
            f"missing {sorted(set(before) - set(after))}, extra {sorted(set(after) - set(before))}"
        )
        for key, value in before.items():
            got = after[key]
            if got.dtype != value.dtype or got.shape != value.shape or got.device != value.device:
                pytest.fail(
                    f"model type {mapping.model_type!r}: after reverse(), {key} is {got.dtype} {tuple(got.shape)} on "
                    f"{got.device}, the original {value.dtype} {tuple(value.shape)} on {value.device}",
                    pytrace=False,
                )
            if not torch.equal(got, value):
                diff = (got.double() - value.double()).abs().max().item() if got.is_floating_point() else "n/a"
                pytest.fail(
                    f"model type {mapping.model_type!r}: after reverse(), {key} is not bit-identical to the original "
                    f"(max abs diff {diff}); the adapter must share or fuse the original parameters, not copy them.",
                    pytrace=False,
                )
        for name, parameter in restored.named_parameters():
            assert parameter.requires_grad == requires_grad.get(name, parameter.requires_grad), (
                f"model type {mapping.model_type!r}: after reverse(), {name}.requires_grad changed"
            )
        changed = sorted(n for n, m in restored.named_modules() if n in classes and type(m) is not classes[n])
        assert not changed, f"model type {mapping.model_type!r}: after reverse(), modules of another class: {changed}"


def _call(model: torch.nn.Module, inputs: dict[str, Any], seed: int) -> Any:
    """Call ``model`` with the torch RNG seeded, so random ops (ViTMAE's masking) repeat exactly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        return model(**inputs)


def _adapter_name(mapping: LayerMapping) -> str:
    adapter = mapping.adapter
    return adapter if isinstance(adapter, str) else getattr(adapter, "__qualname__", repr(adapter))


def _loss(output: Any, mask: Any, seed: int) -> torch.Tensor:
    """A scalar touching every float output on the valid tokens, with seeded weights (so norms do not cancel)."""
    generator = torch.Generator().manual_seed(seed + 2)
    keep = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    total = torch.zeros(())
    for _, tensor in flatten_outputs(output):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or not tensor.requires_grad:
            continue
        weights = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        token_keep = _token_keep(keep, tensor)
        if token_keep is not None:
            weights = weights * token_keep.reshape(*token_keep.shape, *([1] * (tensor.dim() - 2))).to(weights.dtype)
        total = total + (tensor * weights).sum()
    return total


def _grad_diff(name: str, expected: torch.Tensor | None, actual: torch.Tensor | None, atol: float) -> list[str]:
    if expected is None and actual is None:
        return []
    if expected is None or actual is None:
        return [
            f"{name}: gradient {'missing' if actual is None else 'present'} in the converted model, "
            f"{'present' if expected is not None else 'missing'} in the original"
        ]
    diff = (actual.double() - expected.double()).abs().max().item()
    return [] if diff <= atol else [f"{name}: max abs gradient diff {diff:.3g} > {atol:g}"]

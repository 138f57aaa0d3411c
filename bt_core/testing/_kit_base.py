"""The machinery under ``AdapterConformance``: one test per mapping, the registry fixture, building,
converting and comparing. The checks themselves are in ``_kit_parity`` and ``_kit``."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from ..convert import BetterTransformer
from ..layer import BetterTransformerBaseLayer
from ..mapping import LayerMapping
from ..registry import PluginRegistry, set_default_registry
from .compare import OutputDiff
from .examples import ExampleError, build_example_model, example_inputs, to_float64

__all__: list[str] = []


@dataclass(frozen=True)
class Unusable:
    """Stands in for the mappings when the plugin cannot be registered or registers none."""

    reason: str


@dataclass(frozen=True)
class Precision:
    """The dtype a parity check ran in and its tolerances; ``note`` says why it is not float64."""

    dtype: torch.dtype
    atol: float
    grad_atol: float
    note: str = ""

    def describe(self) -> str:
        """``in float64``, or ``in float32 (why)``: part of every parity failure message."""
        name = str(self.dtype).removeprefix("torch.")
        return f"in {name} ({self.note})" if self.note else f"in {name}"


def resolve_plugin(plugin: Any) -> Any:
    """The plugin object: ``plugin`` itself, or the module an import path names."""
    if isinstance(plugin, str):
        return importlib.import_module(plugin)
    return plugin


def call_seeded(model: torch.nn.Module, inputs: dict[str, Any], seed: int) -> Any:
    """Call ``model`` with the torch RNG seeded, so random ops (ViTMAE's masking) repeat exactly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        return model(**inputs)


def adapter_name(mapping: LayerMapping) -> str:
    """The adapter's name for a failure message, without importing it."""
    adapter = mapping.adapter
    return adapter if isinstance(adapter, str) else getattr(adapter, "__qualname__", repr(adapter))


def short(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, cut at ``limit`` characters."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class KitBase:
    """Collection, fixtures and helpers shared by every check; see ``AdapterConformance``."""

    plugin: ClassVar[Any] = None
    plugin_name: ClassVar[str | None] = None
    model_types: ClassVar[Sequence[str] | None] = None
    atol: ClassVar[float] = 1e-5
    grad_atol: ClassVar[float] = 1e-4
    # float64 tolerances. A wrong LayerNorm epsilon (1e-5 for 1e-12) moves outputs by ~1e-5. Float32
    # steps inside the original bound how close float64 can get: eager attention taking its softmax in
    # float32 costs up to ~6e-7 (T5 under transformers 5.10, MarkupLM, Splinter), and so does bt's
    # reference path (train mode, requested hidden states), which does the same.
    float64_atol: ClassVar[float] = 2e-6
    float64_grad_atol: ClassVar[float] = 1e-5
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
        plugin = resolve_plugin(cls.plugin)
        name = cls.plugin_name or getattr(plugin, "__name__", None) or type(plugin).__name__
        return plugin, name

    @classmethod
    def _bt_new_registry(cls) -> PluginRegistry:
        plugin, name = cls._bt_plugin()
        registry = PluginRegistry(discover=False)
        registry.register(plugin, name)
        return registry

    @classmethod
    def _bt_mappings(cls) -> list[LayerMapping | Unusable]:
        _, name = cls._bt_plugin()
        try:
            registry = cls._bt_new_registry()
            mappings = [m.mapping for m in registry.all_mappings()]
            failures = list(registry.failures)
        except Exception as exc:
            return [Unusable(f"plugin {name!r} cannot be registered: {type(exc).__name__}: {exc}")]
        if failures:
            return [Unusable("; ".join(f.describe() for f in failures))]
        if cls.model_types is not None:
            unknown = sorted(set(cls.model_types) - {m.model_type for m in mappings})
            if unknown:
                return [Unusable(f"plugin {name!r} maps no layer of model type(s) {unknown} listed in model_types")]
            mappings = [m for m in mappings if m.model_type in cls.model_types]
        if not mappings:
            return [Unusable(f"plugin {name!r} registers no layer mappings (bt_register_layers returned none)")]
        return list(mappings)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "mapping" not in metafunc.fixturenames:
            return
        mappings = type(self)._bt_mappings()
        ids = []
        for mapping in mappings:
            if isinstance(mapping, Unusable):
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
        except Exception:  # reported by every check, through the Unusable mapping
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
        if isinstance(mapping, Unusable):
            pytest.fail(mapping.reason, pytrace=False)
        return mapping

    def _build(self, mapping: Any, model_class: Any = None) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
        mapping = self._usable(mapping)
        try:
            model, config = build_example_model(mapping, seed=self.seed, perturb=self.perturb, model_class=model_class)
            inputs = example_inputs(mapping, config, self.batch_size, seed=self.seed)
        except ExampleError as exc:
            problem = str(exc)
        else:
            return model, config, inputs
        pytest.fail(problem, pytrace=False)

    def _run_original(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        run: Callable[[torch.nn.Module, dict[str, Any]], Any],
    ) -> tuple[Any, dict[str, Any], Precision]:
        """``run(model, inputs)`` in float64, where rounding cannot hide a small error (a LayerNorm
        epsilon of 1e-5 for 1e-12 moves outputs by ~1e-5, float32's own noise); when the model cannot
        run in float64, in float32. Leaves ``model`` in the dtype used: convert it after this."""
        try:
            inputs64 = to_float64(inputs)
            precision = Precision(torch.float64, self.float64_atol, self.float64_grad_atol)
            return run(model.double(), inputs64), inputs64, precision
        except Exception as exc:
            model.float()  # exact: build_example_model made every float tensor float32
            note = f"the example model cannot run in float64 ({short(exc)}), so this compares in float32"
            return run(model, inputs), inputs, Precision(torch.float32, self.atol, self.grad_atol, note)

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
                f"model type {mapping.model_type!r} (adapter {adapter_name(mapping)}), {what}: the converted "
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

"""Plugin API stability: what a plugin must declare, what happens when it declares the wrong thing,
and the rules that keep one broken or competing plugin from taking the others down.

Entry points are faked by replacing ``importlib.metadata.distributions`` (as pluggy's own tests do),
so these tests see exactly the distributions they describe.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import types
from collections.abc import Callable

import pytest

import bt_core
from bt_core import LayerMapping, PluginLoadError, hookimpl
from bt_core.hookspecs import PLUGIN_API_VERSION
from bt_core.registry import PluginRegistry

MAJOR = int(PLUGIN_API_VERSION.split(".")[0])
ADAPTER = "bt_plugins_encoders.adapters:BertLayerAdapter"


class FakeDistribution:
    def __init__(self, name: str, version: str, entry_points: dict[str, str]) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = [
            metadata.EntryPoint(name=ep, value=target, group="bt_core.plugins") for ep, target in entry_points.items()
        ]


def plugin_module(
    name: str, model_types: list[str], api: str | None = PLUGIN_API_VERSION, layer: str = "BertLayer"
) -> types.ModuleType:
    """A plugin module as a distribution would ship it; ``api=None`` leaves the declaration out."""
    module = types.ModuleType(name)
    if api is not None:
        module.bt_plugin_api_version = hookimpl(lambda: api)
    module.bt_register_layers = hookimpl(lambda: [LayerMapping(t, layer, ADAPTER) for t in model_types])
    return module


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``install(FakeDistribution(...), ..., modules={name: module})``: fake what is installed."""

    def fake(*distributions: FakeDistribution, modules: dict[str, types.ModuleType] | None = None) -> None:
        for name, module in (modules or {}).items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(metadata, "distributions", lambda: iter(distributions))

    monkeypatch.delenv("BT_DISABLE_PLUGINS", raising=False)
    return fake


# -- the declaration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [f"{MAJOR + 1}.0", f"{MAJOR - 1}.9", "0.1"])
def test_an_incompatible_major_is_refused_in_process(declared: str) -> None:
    registry = PluginRegistry(discover=False)
    with pytest.raises(PluginLoadError) as refused:
        registry.register(plugin_module("future_plugin", ["bert"], api=declared), "future")
    message = str(refused.value)
    assert "plugin 'future'" in message
    assert f"plugin API {declared}" in message
    assert f"implements plugin API {PLUGIN_API_VERSION}" in message
    assert "install a release of the plugin built for this API" in message  # the fix
    assert registry.plugins() == []


def test_an_incompatible_major_from_an_entry_point_is_reported_and_others_load(install) -> None:
    install(
        FakeDistribution("acme-bt", "3.1.4", {"acme": "acme_plugin"}),
        FakeDistribution("bt-good", "1.0", {"good": "good_plugin"}),
        modules={
            "acme_plugin": plugin_module("acme_plugin", ["acme"], api=f"{MAJOR + 1}.2"),
            "good_plugin": plugin_module("good_plugin", ["good"]),
        },
    )
    registry = PluginRegistry()
    with pytest.warns(UserWarning, match=r"skipping plugin 'acme' \(acme-bt 3\.1\.4\)"):
        assert registry.supported_model_types() == {"good": "good"}
    (failure,) = registry.failures
    assert (failure.name, failure.distribution, failure.version) == ("acme", "acme-bt", "3.1.4")
    assert f"built for plugin API {MAJOR + 1}.2" in failure.error
    assert f"implements plugin API {PLUGIN_API_VERSION}" in failure.error
    assert "install a release of the plugin built for this API" in failure.error


@pytest.mark.parametrize("declared", [f"{MAJOR}.0", f"{MAJOR}.99", str(MAJOR)])
def test_any_minor_of_the_same_major_is_accepted(declared: str) -> None:
    registry = PluginRegistry(discover=False)
    registry.register(plugin_module("minor_plugin", ["bert"], api=declared), "minor")
    (info,) = registry.plugins()
    assert info.api_version == declared
    assert registry.supported_model_types() == {"bert": "minor"}


def test_a_missing_declaration_is_refused_in_process() -> None:
    registry = PluginRegistry(discover=False)
    with pytest.raises(
        PluginLoadError, match=r"plugin 'silent' does not declare the plugin API.*bt_plugin_api_version"
    ):
        registry.register(plugin_module("silent_plugin", ["bert"], api=None), "silent")
    assert registry.plugins() == []


def test_a_missing_declaration_from_an_entry_point_is_reported(install) -> None:
    install(
        FakeDistribution("bt-silent", "0.2", {"silent": "silent_plugin"}),
        modules={"silent_plugin": plugin_module("silent_plugin", ["silent"], api=None)},
    )
    registry = PluginRegistry()
    with pytest.warns(UserWarning, match="does not declare the plugin API"):
        assert registry.supported_model_types() == {}
    assert [(f.name, f.distribution, f.version) for f in registry.failures] == [("silent", "bt-silent", "0.2")]


# -- broken plugins -----------------------------------------------------------------------------------


def test_a_plugin_failing_to_import_is_reported_with_name_version_and_error(install) -> None:
    broken = types.ModuleType("half_plugin")  # importing it raises, like a plugin with a bad import
    install(
        FakeDistribution("bt-half", "0.9.1", {"half": "half_plugin.inner"}),
        FakeDistribution("bt-good", "1.0", {"good": "good_plugin"}),
        modules={"half_plugin": broken, "good_plugin": plugin_module("good_plugin", ["good"])},
    )
    registry = PluginRegistry()
    with pytest.warns(UserWarning, match=r"plugin 'half' \(bt-half 0\.9\.1\): failed to load: ModuleNotFoundError"):
        assert registry.supported_model_types() == {"good": "good"}
    (failure,) = registry.failures
    assert failure.describe().startswith("plugin 'half' (bt-half 0.9.1): failed to load: ModuleNotFoundError")


def test_a_plugin_raising_at_import_is_reported(install, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: metadata.EntryPoint) -> object:
        if self.name == "explodes":
            raise ImportError("cannot import name 'Thing' from 'transformers'")
        return original(self)

    original = metadata.EntryPoint.load
    monkeypatch.setattr(metadata.EntryPoint, "load", explode)
    install(
        FakeDistribution("bt-explodes", "2.0", {"explodes": "whatever"}),
        FakeDistribution("bt-good", "1.0", {"good": "good_plugin"}),
        modules={"good_plugin": plugin_module("good_plugin", ["good"])},
    )
    registry = PluginRegistry()
    with pytest.warns(UserWarning, match="cannot import name 'Thing'"):
        assert registry.supported_model_types() == {"good": "good"}
    assert registry.failures[0].error == "failed to load: ImportError: cannot import name 'Thing' from 'transformers'"


# -- conflicts ----------------------------------------------------------------------------------------


def test_entry_point_conflicts_go_to_the_name_sorting_first_with_a_warning(install) -> None:
    install(
        FakeDistribution("bt-zeta", "1.0", {"zeta": "zeta_plugin"}),
        FakeDistribution("bt-alpha", "1.0", {"alpha": "alpha_plugin"}),
        modules={
            "zeta_plugin": plugin_module("zeta_plugin", ["bert", "zonly"]),
            "alpha_plugin": plugin_module("alpha_plugin", ["bert"]),
        },
    )
    registry = PluginRegistry()
    with pytest.warns(UserWarning, match=r"plugins 'alpha' and 'zeta' both convert model type 'bert'; using 'alpha'"):
        assert registry.supported_model_types() == {"bert": "alpha", "zonly": "zeta"}
    assert [(c.model_type, c.winner, c.loser) for c in registry.conflicts] == [("bert", "alpha", "zeta")]


def test_in_process_registrations_win_latest_first(install) -> None:
    install(
        FakeDistribution("bt-alpha", "1.0", {"alpha": "alpha_plugin"}),
        modules={"alpha_plugin": plugin_module("alpha_plugin", ["bert"])},
    )
    registry = PluginRegistry()
    registry.register(plugin_module("mine", ["bert"]), "mine")
    registry.register(plugin_module("mine_too", ["bert"]), "mine-too")
    with pytest.warns(UserWarning) as caught:
        assert registry.supported_model_types() == {"bert": "mine-too"}
    messages = [str(w.message) for w in caught]
    assert any("'mine-too' and 'mine' both convert model type 'bert'" in m for m in messages)
    assert any("'mine-too' and 'alpha' both convert model type 'bert'" in m for m in messages)
    assert all("BT_DISABLE_PLUGINS=" in m for m in messages if "both convert" in m)


# -- BT_DISABLE_PLUGINS -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["zeta", "bt-zeta", " zeta , other", "zeta,alpha"])
def test_disable_plugins_by_entry_point_or_distribution_name(
    install, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    install(
        FakeDistribution("bt-zeta", "1.0", {"zeta": "zeta_plugin"}),
        FakeDistribution("bt-alpha", "1.0", {"alpha": "alpha_plugin"}),
        modules={
            "zeta_plugin": plugin_module("zeta_plugin", ["zeta"]),
            "alpha_plugin": plugin_module("alpha_plugin", ["alpha"]),
        },
    )
    monkeypatch.setenv("BT_DISABLE_PLUGINS", value)
    registry = PluginRegistry()
    expected = {} if "alpha" in value else {"alpha": "alpha"}
    assert registry.supported_model_types() == expected
    assert "zeta" in registry.disabled
    assert registry.failures == []


def test_disabling_silences_a_conflict(install, monkeypatch: pytest.MonkeyPatch) -> None:
    install(
        FakeDistribution("bt-zeta", "1.0", {"zeta": "zeta_plugin"}),
        FakeDistribution("bt-alpha", "1.0", {"alpha": "alpha_plugin"}),
        modules={
            "zeta_plugin": plugin_module("zeta_plugin", ["bert"]),
            "alpha_plugin": plugin_module("alpha_plugin", ["bert"]),
        },
    )
    monkeypatch.setenv("BT_DISABLE_PLUGINS", "alpha")
    registry = PluginRegistry()
    assert registry.supported_model_types() == {"bert": "zeta"}
    assert registry.conflicts == []


def test_disabling_a_broken_plugin_avoids_importing_it(install, monkeypatch: pytest.MonkeyPatch) -> None:
    install(FakeDistribution("bt-broken", "0.1", {"broken": "no_such_module_anywhere"}))
    monkeypatch.setenv("BT_DISABLE_PLUGINS", "broken")
    registry = PluginRegistry()
    assert registry.supported_model_types() == {}
    assert registry.failures == [] and registry.disabled == ["broken"]


def test_the_public_api_version_is_major_dot_minor() -> None:
    major, minor = bt_core.PLUGIN_API_VERSION.split(".")
    assert major.isdigit() and minor.isdigit()


@pytest.mark.parametrize("value", ["bt_zeta", "BT-Zeta"])
def test_disable_plugins_accepts_normalized_distribution_names(
    install, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    install(
        FakeDistribution("bt-zeta", "1.0", {"zeta": "zeta_plugin"}),
        modules={"zeta_plugin": plugin_module("zeta_plugin", ["zeta"])},
    )
    monkeypatch.setenv("BT_DISABLE_PLUGINS", value)
    assert PluginRegistry().supported_model_types() == {}


def test_a_raising_declaration_is_a_plugin_load_error() -> None:
    class Raises:
        @hookimpl
        def bt_plugin_api_version(self) -> str:
            raise RuntimeError("version file missing")

    with pytest.raises(PluginLoadError, match="plugin 'raises'"):
        PluginRegistry(discover=False).register(Raises(), "raises")


# -- compatibility across minors ----------------------------------------------------------------------


def test_a_plugin_built_for_api_1_0_loads_and_converts_without_a_warning(recwarn: pytest.WarningsRecorder) -> None:
    """1.1 added declarations; a 1.0 adapter (fused attributes assigned by hand) keeps working as it was."""
    import torch
    from api_1_0_adapter import Api10BertAdapter, api_1_0_plugin
    from transformers import BertConfig, BertModel

    from bt_core import BetterTransformer

    registry = PluginRegistry(discover=False)
    registry.register(api_1_0_plugin(), "api10")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=50)
    model = BertModel(config).eval()
    ids = torch.randint(1, 50, (3, 9))
    mask = (torch.arange(9)[None, :] < torch.tensor([[9], [5], [2]])).long()
    with torch.inference_mode():
        expected = model(ids, attention_mask=mask).last_hidden_state
        converted = BetterTransformer.transform(model, keep_original_model=True, registry=registry)
        actual = converted(ids, attention_mask=mask).last_hidden_state
    assert isinstance(converted.encoder.layer[0], Api10BertAdapter)
    torch.testing.assert_close(actual * mask[..., None], expected * mask[..., None], atol=1e-5, rtol=0)
    assert not [w for w in recwarn.list if "bt" in str(w.message).lower() or "plugin" in str(w.message).lower()]

"""The registry: lazy entry-point discovery, deduplication, and plugins that break."""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import types

import pytest

import bt_core
from bt_core import LayerMapping
from bt_core.registry import PluginRegistry

from .toy_model import ToyPlugin


class FakeDistribution:
    """Stands in for an installed distribution with entry points (as pluggy's own tests do)."""

    def __init__(self, name: str, version: str, entry_points: dict[str, str]) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = [
            metadata.EntryPoint(name=ep_name, value=target, group="bt_core.plugins")
            for ep_name, target in entry_points.items()
        ]


def _plugin_module(name: str, model_type: str) -> types.ModuleType:
    module = types.ModuleType(name)
    plugin = ToyPlugin()
    module.bt_plugin_api_version = bt_core.hookimpl(lambda: bt_core.PLUGIN_API_VERSION)
    module.bt_register_layers = bt_core.hookimpl(
        lambda: [LayerMapping(model_type, "ToyLayer", m.adapter) for m in plugin.bt_register_layers()]
    )
    return module


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Fake the installed distributions the registry discovers."""

    def install(*distributions: FakeDistribution) -> None:
        monkeypatch.setattr(metadata, "distributions", lambda: iter(distributions))

    return install


def test_an_empty_registry_supports_nothing() -> None:
    assert PluginRegistry(discover=False).supported_model_types() == {}


def test_in_process_registration_maps_model_types_to_the_plugin() -> None:
    registry = PluginRegistry(discover=False)
    registry.register(ToyPlugin(), "toy")
    assert registry.supported_model_types() == {"bt-toy": "toy"}
    assert registry.refusal_for("bt-toy-rotary")[1] == "toy"


def test_discovery_is_lazy(installed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lazy_plugin", _plugin_module("lazy_plugin", "lazy"))
    loads = []
    original_load = metadata.EntryPoint.load
    monkeypatch.setattr(metadata.EntryPoint, "load", lambda self: loads.append(self.name) or original_load(self))
    installed(FakeDistribution("bt-lazy", "1.0", {"lazy": "lazy_plugin"}))
    registry = PluginRegistry()
    assert loads == [], "constructing a registry must not import plugins"
    assert registry.supported_model_types() == {"lazy": "lazy"}
    assert loads == ["lazy"]


def test_a_distribution_seen_twice_is_loaded_once(installed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "twice_plugin", _plugin_module("twice_plugin", "twice"))
    dist = FakeDistribution("bt-twice", "1.0", {"twice": "twice_plugin"})
    installed(dist, FakeDistribution("bt_twice", "1.0", {"twice": "twice_plugin"}))
    registry = PluginRegistry()
    assert [p.name for p in registry.plugins()] == ["twice"]
    assert registry.failures == []


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_load(installed, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "good_plugin", _plugin_module("good_plugin", "good"))
    installed(
        FakeDistribution("bt-broken", "0.3", {"broken": "no_such_module_anywhere"}),
        FakeDistribution("bt-good", "1.0", {"good": "good_plugin"}),
    )
    registry = PluginRegistry()
    with pytest.warns(
        UserWarning, match=r"skipping plugin 'broken' \(bt-broken 0\.3\): failed to load: ModuleNotFoundError"
    ):
        assert registry.supported_model_types() == {"good": "good"}
    assert [f.name for f in registry.failures] == ["broken"]


def test_a_plugin_that_raises_while_registering_is_reported_and_the_others_work() -> None:
    class Exploding:
        @bt_core.hookimpl
        def bt_plugin_api_version(self) -> str:
            return "1.0"

        @bt_core.hookimpl
        def bt_register_layers(self) -> list[LayerMapping]:
            raise RuntimeError("boom")

    registry = PluginRegistry(discover=False)
    registry.register(Exploding(), "exploding")
    registry.register(ToyPlugin(), "toy")
    with pytest.warns(UserWarning, match=r"plugin 'exploding': failed to register: RuntimeError: boom"):
        assert registry.supported_model_types() == {"bt-toy": "toy"}


def test_a_plugin_returning_something_else_than_mappings_is_reported() -> None:
    class Sloppy:
        @bt_core.hookimpl
        def bt_plugin_api_version(self) -> str:
            return "1.0"

        @bt_core.hookimpl
        def bt_register_layers(self) -> list:
            return [("bert", "BertLayer")]

    registry = PluginRegistry(discover=False)
    registry.register(Sloppy(), "sloppy")
    with pytest.warns(UserWarning, match="not a bt_core.LayerMapping"):
        assert registry.supported_model_types() == {}


def test_an_unknown_hook_name_is_refused_naming_the_plugin() -> None:
    class Typo:
        @bt_core.hookimpl
        def bt_plugin_api_version(self) -> str:
            return "1.0"

        @bt_core.hookimpl
        def bt_register_layer(self) -> list:  # missing "s"
            return []

    registry = PluginRegistry(discover=False)
    with pytest.raises(
        bt_core.PluginLoadError, match=r"plugin 'typo' does not fit the bt hookspecs.*bt_register_layer"
    ):
        registry.register(Typo(), "typo")
    assert registry.plugins() == []


def test_the_api_declaration_is_read_from_the_hookimpl_whatever_its_python_name() -> None:
    class Renamed:
        @bt_core.hookimpl(specname="bt_plugin_api_version")
        def declared_api(self) -> str:
            return bt_core.PLUGIN_API_VERSION

    registry = PluginRegistry(discover=False)
    registry.register(Renamed(), "renamed")
    assert [p.api_version for p in registry.plugins()] == [bt_core.PLUGIN_API_VERSION]


def test_an_unmarked_function_is_not_an_api_declaration() -> None:
    class Unmarked:
        def bt_plugin_api_version(self) -> str:  # no @hookimpl: pluggy ignores it, so must bt
            return bt_core.PLUGIN_API_VERSION

    registry = PluginRegistry(discover=False)
    with pytest.raises(bt_core.PluginLoadError, match="does not declare the plugin API"):
        registry.register(Unmarked(), "unmarked")
    assert not registry.manager.has_plugin("unmarked")


def test_registry_with_makes_exactly_the_named_plugins_the_default_and_restores_the_previous() -> None:
    from bt_core.registry import default_registry
    from bt_core.testing import registry_with

    before = default_registry()
    with pytest.raises(RuntimeError), registry_with(ToyPlugin(), name="one") as registry:
        assert default_registry() is registry
        assert [p.name for p in registry.plugins()] == ["one"]
        raise RuntimeError("a failing test")
    assert default_registry() is before
    with registry_with(a=ToyPlugin(), b=ToyPlugin()) as registry:
        assert sorted(p.name for p in registry.plugins()) == ["a", "b"]
    with pytest.raises(TypeError, match="name= names a single positional plugin"):
        with registry_with(ToyPlugin(), ToyPlugin(), name="x"):
            pass

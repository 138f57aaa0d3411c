"""Every hook in ``bt_core.hookspecs`` is documented and exercised end to end.

A new hookspec added without a docstring, or without a test here, fails ``test_every_hookspec_is_exercised``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from bt_core import LayerMapping, UnsupportedModelError, hookimpl, hookspecs
from bt_core.hookspecs import PLUGIN_API_VERSION, PROJECT_NAME
from bt_core.registry import ENTRY_POINT_GROUP, PluginRegistry

ADAPTER = "bt_plugins_encoders.adapters:BertLayerAdapter"


def hookspec_names() -> list[str]:
    marker = f"{PROJECT_NAME}_spec"
    return sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker))


class EveryHook:
    """A plugin implementing every hook in the spec."""

    @hookimpl
    def bt_plugin_api_version(self) -> str:
        return PLUGIN_API_VERSION

    @hookimpl
    def bt_register_layers(self) -> list[LayerMapping]:
        return [LayerMapping("bert", "BertLayer", ADAPTER)]

    @hookimpl
    def bt_refused_model_types(self) -> dict[str, str]:
        return {"t5": "relative position bias in every attention layer"}


def exercise_bt_plugin_api_version() -> None:
    registry = PluginRegistry(discover=False)
    registry.register(EveryHook(), "every")
    assert registry.plugins()[0].api_version == PLUGIN_API_VERSION


def exercise_bt_register_layers() -> None:
    registry = PluginRegistry(discover=False)
    registry.register(EveryHook(), "every")
    (registered,) = registry.mappings_for("bert")
    assert registered.mapping.layer_class_name == "BertLayer" and registered.plugin.name == "every"
    from transformers import BertConfig, BertModel

    from bt_core import BetterTransformer

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=50)
    model = BetterTransformer.transform(BertModel(config).eval(), registry=registry)
    assert BetterTransformer.is_converted(model)


def exercise_bt_refused_model_types() -> None:
    registry = PluginRegistry(discover=False)
    registry.register(EveryHook(), "every")
    assert registry.refusal_for("t5") == ("relative position bias in every attention layer", "every")
    from transformers import T5Config, T5EncoderModel

    from bt_core import BetterTransformer

    config = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, vocab_size=50)
    with pytest.raises(UnsupportedModelError, match=r"'t5' cannot be converted exactly: relative position bias"):
        BetterTransformer.transform(T5EncoderModel(config), registry=registry)


EXERCISED: dict[str, Callable[[], None]] = {
    "bt_plugin_api_version": exercise_bt_plugin_api_version,
    "bt_register_layers": exercise_bt_register_layers,
    "bt_refused_model_types": exercise_bt_refused_model_types,
}


def test_every_hookspec_is_exercised() -> None:
    assert hookspec_names() == sorted(EXERCISED), (
        "a hook was added to (or removed from) bt_core.hookspecs: exercise it in tests/test_hookspecs.py"
    )


@pytest.mark.parametrize("name", sorted(EXERCISED))
def test_hook(name: str) -> None:
    EXERCISED[name]()


@pytest.mark.parametrize("name", hookspec_names())
def test_every_hookspec_is_documented(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc and len(doc) > 40, f"hookspec {name} needs a docstring for plugin authors"
    assert "Added in plugin API" in doc, f"hookspec {name}: say in which plugin API version it was added"


def test_the_entry_point_group_is_documented_in_the_hookspecs() -> None:
    assert ENTRY_POINT_GROUP == "bt_core.plugins"
    assert f'[project.entry-points."{ENTRY_POINT_GROUP}"]' in (hookspecs.__doc__ or "")


def test_the_hookspec_names_are_the_documented_api() -> None:
    # Renaming or removing one of these is a major plugin API change (see bt_core.hookspecs).
    assert set(hookspec_names()) >= {"bt_plugin_api_version", "bt_register_layers", "bt_refused_model_types"}

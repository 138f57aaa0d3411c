"""The conformance kit for bt adapters: one pytest class every plugin runs over its own mappings.

In a plugin's test suite::

    from bt_core.testing import AdapterConformance

    import my_package.bt_plugin


    class TestMyPlugin(AdapterConformance):
        plugin = my_package.bt_plugin

pytest collects the subclass and runs every check once per :class:`bt_core.LayerMapping` the plugin
registers (see :class:`AdapterConformance` for the list). The kit needs pytest; importing
``bt_core.testing`` itself stays cheap, and the pytest-free helpers live in
:mod:`bt_core.testing.examples` (example models and inputs) and :mod:`bt_core.testing.compare`
(comparing outputs); ``bt check`` uses them. :func:`registry_with` makes a registry of exactly the
plugins a test names the process default for the test.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._kit import AdapterConformance
    from .compare import OutputDiff, compare_outputs
    from .examples import (
        ExampleError,
        build_example_model,
        default_inputs,
        example_inputs,
        new_example_config,
        zero_dropout,
    )
    from .registries import registry_with

__all__ = [
    "AdapterConformance",
    "ExampleError",
    "OutputDiff",
    "build_example_model",
    "compare_outputs",
    "default_inputs",
    "example_inputs",
    "new_example_config",
    "registry_with",
    "zero_dropout",
]

_LAZY = {
    "AdapterConformance": "._kit",
    "OutputDiff": ".compare",
    "compare_outputs": ".compare",
    "registry_with": ".registries",
    **{
        name: ".examples"
        for name in __all__
        if name not in ("AdapterConformance", "OutputDiff", "compare_outputs", "registry_with")
    },
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (the kit imports pytest and torch)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bt_core.testing' has no attribute {name!r}")

"""A registry holding exactly the plugins a test names, as bt's process default while the test runs.

For a plugin's own tests: conversion then sees only those plugins, whatever else is installed, and the
previous default comes back afterwards even when the test fails::

    @pytest.fixture(autouse=True)
    def only_my_plugin():
        with registry_with(my_package.bt_plugin, name="mine") as registry:
            yield registry
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..registry import PluginRegistry, set_default_registry

__all__ = ["registry_with"]


@contextlib.contextmanager
def registry_with(*plugins: Any, name: str | None = None, **named: Any) -> Iterator[PluginRegistry]:
    """A fresh registry without entry-point discovery, holding ``plugins`` (registered under ``name`` when
    there is one plugin) and ``named`` (name -> plugin), made bt's default until the block exits."""
    if name is not None and len(plugins) != 1:
        raise TypeError("registry_with: name= names a single positional plugin; pass several as name=plugin")
    registry = PluginRegistry(discover=False)
    for plugin in plugins:
        registry.register(plugin, name)
    for plugin_name, plugin in named.items():
        registry.register(plugin, plugin_name)
    previous = set_default_registry(registry)
    try:
        yield registry
    finally:
        set_default_registry(previous)

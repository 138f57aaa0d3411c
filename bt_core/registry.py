"""The plugin registry: finds plugins through entry points, collects their layer mappings.

Rules, in one place:

- Discovery is lazy: entry points in the ``bt_core.plugins`` group are loaded on first use.
  A distribution seen twice on ``sys.path`` (editable installs, lib/lib64 links) counts once.
- A plugin that fails to import, declares an incompatible plugin API, or raises while registering
  is recorded in ``failures`` (with its name, version and the error) and warned about; the other
  plugins still load.
- ``BT_DISABLE_PLUGINS=name[,name...]`` skips plugins by entry-point or distribution name
  (compared as pip compares names: case and ``-_.`` do not matter).
- Conflicts: when two plugins map the same ``model_type``, plugins registered in-process with
  ``register_plugin`` win over entry-point plugins, the latest in-process registration first;
  among entry-point plugins the one whose name sorts first wins. A warning names both.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import warnings
from typing import Any

import pluggy

from . import hookspecs
from ._registry_records import Conflict, PluginFailure, PluginInfo, RegisteredMapping, _Collected
from .errors import PluginLoadError
from .mapping import LayerMapping

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "Conflict",
    "PluginFailure",
    "PluginInfo",
    "PluginRegistry",
    "RegisteredMapping",
    "default_registry",
    "register_plugin",
    "set_default_registry",
    "supported_model_types",
]

ENTRY_POINT_GROUP = f"{hookspecs.PROJECT_NAME}.plugins"
DISABLE_ENV = "BT_DISABLE_PLUGINS"


def _normalize(name: str) -> str:
    """A distribution or plugin name as pip compares them (PEP 503): case and -_. folded."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _api_major(version: str) -> str:
    return str(version).split(".", 1)[0]


def _core_version() -> str:
    try:
        return metadata.version("bt-core")
    except metadata.PackageNotFoundError:
        return "unknown"


class PluginRegistry:
    """A pluggy manager plus the bookkeeping bt needs: failures, conflicts, disabled plugins."""

    def __init__(self, *, discover: bool = True, group: str = ENTRY_POINT_GROUP) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.group = group
        self._discover = discover
        self._discovered = False
        self._plugins: dict[str, PluginInfo] = {}
        self._order = 0
        self.failures: list[PluginFailure] = []
        self.disabled: list[str] = []
        self._collected: _Collected | None = None

    # -- registration ---------------------------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register ``plugin`` in-process; raises :class:`PluginLoadError` naming what is wrong."""
        self._ensure_discovered()
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        info = PluginInfo(name=name, source="in-process", order=self._next_order())
        self._add(plugin, info)
        return name

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self._plugins.pop(name, None)
        self._collected = None

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    def _add(self, plugin: Any, info: PluginInfo) -> None:
        if self.manager.has_plugin(info.name):
            raise PluginLoadError(
                f"plugin {info.name!r} is already registered; unregister it first or pick another name."
            )
        try:
            self.manager.register(plugin, name=info.name)
            # A misspelt hook would otherwise be ignored silently.
            self.manager.check_pending()
            api = self._check_api_version(info)
        except pluggy.PluginValidationError as exc:
            self._drop(info.name)
            raise PluginLoadError(
                f"plugin {info.name!r} does not fit the bt hookspecs: {exc}. Hooks are named in bt_core.hookspecs."
            ) from exc
        except BaseException:
            self._drop(info.name)
            raise
        self._plugins[info.name] = PluginInfo(info.name, info.source, info.distribution, info.version, api, info.order)
        self._collected = None

    def _drop(self, name: str) -> None:
        if self.manager.has_plugin(name):
            self.manager.unregister(name=name)

    def _check_api_version(self, info: PluginInfo) -> str:
        """The API version the registered plugin declares through its ``bt_plugin_api_version`` hookimpl."""
        impls = [i for i in self.manager.hook.bt_plugin_api_version.get_hookimpls() if i.plugin_name == info.name]
        if not impls:
            raise PluginLoadError(
                f"plugin {info.name!r} does not declare the plugin API it was built for; add a "
                f"`@bt_core.hookimpl def bt_plugin_api_version()` returning {hookspecs.PLUGIN_API_VERSION!r}."
            )
        try:
            declared = str(impls[0].function())
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {info.name!r}: bt_plugin_api_version() raised {type(exc).__name__}: {exc}; "
                f"it must return the plugin API version it was built for, e.g. {hookspecs.PLUGIN_API_VERSION!r}."
            ) from exc
        if _api_major(declared) != _api_major(hookspecs.PLUGIN_API_VERSION):
            shipped = f" ({info.distribution} {info.version})" if info.distribution else ""
            raise PluginLoadError(
                f"plugin {info.name!r}{shipped} was built for plugin API {declared}, but bt-core "
                f"{_core_version()} implements plugin API {hookspecs.PLUGIN_API_VERSION}; install a "
                "release of the plugin built for this API, or a bt-core whose API major matches."
            )
        return declared

    # -- discovery ------------------------------------------------------------------------------

    def _ensure_discovered(self) -> None:
        if self._discovered or not self._discover:
            return
        self._discovered = True
        self.disabled = []
        blocked = {_normalize(n) for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        seen: set[str] = set()
        found = []
        for dist in metadata.distributions():
            dist_name = dist.metadata["Name"] or ""
            key = _normalize(dist_name)
            if key in seen:
                continue
            seen.add(key)
            for ep in dist.entry_points:
                if ep.group == self.group:
                    found.append((ep.name, dist_name, dist.version, ep))
        for ep_name, dist_name, version, ep in sorted(found, key=lambda item: item[0]):
            if _normalize(ep_name) in blocked or _normalize(dist_name) in blocked:
                self.disabled.append(ep_name)
                continue
            info = PluginInfo(ep_name, "entry point", dist_name, version, order=0)
            try:
                self._add(ep.load(), info)
            except Exception as exc:  # one broken plugin must never take the host down
                self._fail(info, f"failed to load: {type(exc).__name__}: {exc}")

    def _fail(self, info: PluginInfo, error: str) -> None:
        failure = PluginFailure(info.name, info.distribution, info.version, error)
        self.failures.append(failure)
        warnings.warn(f"bt: skipping {failure.describe()} (bt-core {_core_version()})", stacklevel=3)

    # -- what the plugins provide ---------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        self._ensure_discovered()
        return sorted(self._plugins.values(), key=_precedence)

    def _collect(self) -> _Collected:
        self._ensure_discovered()
        if self._collected is not None:
            return self._collected
        collected = _Collected()
        register_impls = {impl.plugin_name: impl for impl in self.manager.hook.bt_register_layers.get_hookimpls()}
        refusal_impls = {impl.plugin_name: impl for impl in self.manager.hook.bt_refused_model_types.get_hookimpls()}
        for info in self.plugins():
            try:
                mappings = list(register_impls[info.name].function()) if info.name in register_impls else []
                refusals = dict(refusal_impls[info.name].function()) if info.name in refusal_impls else {}
                for mapping in mappings:
                    if not isinstance(mapping, LayerMapping):
                        raise TypeError(f"bt_register_layers returned {mapping!r}, not a bt_core.LayerMapping")
            except Exception as exc:
                self._fail(info, f"failed to register: {type(exc).__name__}: {exc}")
                continue
            for mapping in mappings:
                collected.mappings.setdefault(mapping.model_type, []).append(RegisteredMapping(mapping, info))
            for model_type, reason in refusals.items():
                collected.refusals.setdefault(model_type, (reason, info.name))
        for model_type, candidates in collected.mappings.items():
            providers = list(dict.fromkeys(c.plugin.name for c in candidates))
            for loser in providers[1:]:
                conflict = Conflict(model_type, providers[0], loser)
                collected.conflicts.append(conflict)
                warnings.warn(
                    f"bt: plugins {conflict.winner!r} and {conflict.loser!r} both convert model type "
                    f"{model_type!r}; using {conflict.winner!r} (in-process registrations first, then "
                    f"entry points by name). Set {DISABLE_ENV}={conflict.loser} to silence this.",
                    stacklevel=3,
                )
        self._collected = collected
        return collected

    def mappings_for(self, model_type: str) -> list[RegisteredMapping]:
        """The mappings of the winning plugin for ``model_type`` (one per layer class)."""
        candidates = self._collect().mappings.get(model_type, [])
        if not candidates:
            return []
        winner = candidates[0].plugin.name
        return [c for c in candidates if c.plugin.name == winner]

    def all_mappings(self) -> list[RegisteredMapping]:
        return [m for model_type in sorted(self._collect().mappings) for m in self.mappings_for(model_type)]

    def refusal_for(self, model_type: str) -> tuple[str, str] | None:
        """``(reason, plugin)`` when a plugin declared ``model_type`` impossible to convert exactly."""
        return self._collect().refusals.get(model_type)

    @property
    def conflicts(self) -> list[Conflict]:
        return self._collect().conflicts

    def supported_model_types(self) -> dict[str, str]:
        """``{model_type: plugin_name}`` for every model type some loaded plugin converts."""
        return {
            model_type: self.mappings_for(model_type)[0].plugin.name for model_type in sorted(self._collect().mappings)
        }


def _precedence(info: PluginInfo) -> tuple[int, int, str]:
    if info.source == "in-process":
        return (0, -info.order, info.name)
    return (1, 0, info.name)


_default: PluginRegistry | None = None


def default_registry() -> PluginRegistry:
    """The process-wide registry, created (and plugins discovered) on first use."""
    global _default
    if _default is None:
        _default = PluginRegistry()
    return _default


def set_default_registry(registry: PluginRegistry | None) -> PluginRegistry | None:
    """Replace the process-wide registry (tests use a fresh one); returns the previous one."""
    global _default
    previous, _default = _default, registry
    return previous


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object or module in this process, beside those found through entry points."""
    return default_registry().register(plugin, name)


def supported_model_types() -> dict[str, str]:
    """``{model_type: plugin_name}`` for every model type the loaded plugins convert."""
    return default_registry().supported_model_types()

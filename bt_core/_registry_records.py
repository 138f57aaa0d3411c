"""What the plugin registry records: the plugins it loaded, those it could not use, the mappings they
provide and the conflicts between them. Re-exported by :mod:`bt_core.registry`, where they are documented
as part of its API."""

from __future__ import annotations

from dataclasses import dataclass, field

from .mapping import LayerMapping

__all__ = ["Conflict", "PluginFailure", "PluginInfo", "RegisteredMapping"]


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, the distribution that ships it and that distribution's version."""

    name: str
    source: str  # "entry point" or "in-process"
    distribution: str | None = None
    version: str | None = None
    api_version: str | None = None
    order: int = 0


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    name: str
    distribution: str | None
    version: str | None
    error: str

    def describe(self) -> str:
        shipped = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"plugin {self.name!r}{shipped}: {self.error}"


@dataclass(frozen=True)
class RegisteredMapping:
    """A layer mapping and the plugin that provides it."""

    mapping: LayerMapping
    plugin: PluginInfo


@dataclass(frozen=True)
class Conflict:
    model_type: str
    winner: str
    loser: str


@dataclass
class _Collected:
    mappings: dict[str, list[RegisteredMapping]] = field(default_factory=dict)
    refusals: dict[str, tuple[str, str]] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)

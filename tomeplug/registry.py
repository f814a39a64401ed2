"""The plugin registry: a pluggy manager over the ``tomeplug`` entry points, loaded once and lazily."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterator
from typing import Any

import attrs
import pluggy

from tomeplug import hookspecs
from tomeplug.adapter import Adapter
from tomeplug.config import StrategyConfig

ENTRY_POINT_GROUP = "tomeplug"
DISABLE_AUTOLOAD_ENV = "TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD"


class PluginError(Exception):
    """A plugin registered something invalid (a duplicate name, a wrong type)."""


@attrs.frozen
class Origin:
    """Where a registration came from: the plugin, and its distribution when installed."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution is None:
            return f"plugin {self.plugin!r} (registered at runtime)"
        return f"plugin {self.plugin!r} from {self.distribution} {self.version}"


@attrs.frozen
class Entry:
    """One registered strategy config class or adapter, with its origin."""

    name: str
    obj: Any
    origin: Origin


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded or registered, and why."""

    origin: Origin
    reason: str


class Registry:
    """Strategies and adapters registered by plugins.

    Args:
        autoload: load the ``tomeplug`` entry points on first lookup. ``None`` reads the environment:
            autoloading is on unless ``TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value.
    """

    def __init__(self, autoload: bool | None = None) -> None:
        if autoload is None:
            autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
        self._autoload = autoload
        self._pm = pluggy.PluginManager("tomeplug")
        self._pm.add_hookspecs(hookspecs)
        self._origins: dict[str, Origin] = {}
        self._failures: list[PluginFailure] = []
        self._entry_points_loaded = False
        self._strategies: dict[str, Entry] | None = None
        self._adapters: dict[str, Entry] | None = None

    def register_plugin(self, plugin: object, name: str | None = None, origin: Origin | None = None) -> None:
        """Register a plugin (a module or object with hook implementations) now.

        A plugin that registers an invalid or duplicate entry raises :class:`PluginError`; one whose hook
        raises (e.g. a failing import inside it) passes that error on. Either way it is not kept.
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        origin = origin or Origin(plugin=name)
        self._pm.register(plugin, name=name)
        self._origins[name] = origin
        try:
            self._collect()
        except Exception:  # a plugin left registered would break every later lookup
            self._pm.unregister(name=name)
            del self._origins[name]
            self._collect()
            raise

    @property
    def strategies(self) -> dict[str, Entry]:
        """Registered strategies by name (entries hold the config class)."""
        self._load()
        return dict(self._strategies)

    @property
    def adapters(self) -> dict[str, Entry]:
        """Registered adapters by name (entries hold the adapter instance)."""
        self._load()
        return dict(self._adapters)

    @property
    def failures(self) -> list[PluginFailure]:
        """Plugins that failed to load or register, with the reason."""
        self._load()
        return list(self._failures)

    def strategy(self, name: str) -> type[StrategyConfig]:
        """The config class of a strategy; an unknown name raises and lists the installed ones."""
        entries = self.strategies
        if name not in entries:
            raise KeyError(
                f"unknown strategy {name!r}; installed strategies: {', '.join(sorted(entries)) or 'none'}. "
                "Install a plugin that provides it, or pick one of these."
            )
        return entries[name].obj

    def adapter_for(self, model: object) -> Adapter:
        """The adapter whose ``matches(model)`` is true; none raises and lists the adapters."""
        entries = self.adapters
        for entry in entries.values():
            if entry.obj.matches(model):
                return entry.obj
        raise TypeError(
            f"no adapter supports {type(model).__module__}.{type(model).__qualname__}; installed adapters: "
            + "; ".join(f"{e.name} ({e.obj.describe()})" for e in entries.values())
            + ". Pass the model (or its image encoder) one of these supports, or install an adapter plugin."
        )

    def _load(self) -> None:
        if self._autoload and not self._entry_points_loaded:
            self._entry_points_loaded = True
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = getattr(ep, "dist", None)
                origin = Origin(ep.name, dist.name if dist else None, dist.version if dist else None)
                try:
                    self.register_plugin(ep.load(), name=ep.name, origin=origin)
                except Exception as exc:  # a broken plugin must not break the others
                    reason = f"{type(exc).__name__}: {exc}"
                    self._failures.append(PluginFailure(origin, reason))
                    warnings.warn(f"tomeplug: skipped {origin}: {reason}", RuntimeWarning, stacklevel=3)
        if self._strategies is None:
            self._collect()

    def _collect(self) -> None:
        strategies: dict[str, Entry] = {}
        adapters: dict[str, Entry] = {}
        self._call("tomeplug_register_strategies", strategies, _check_strategy)
        self._call("tomeplug_register_adapters", adapters, _check_adapter)
        self._strategies, self._adapters = strategies, adapters

    def _call(self, hook_name: str, into: dict[str, Entry], check) -> None:
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():  # in registration order
            origin = self._origins.get(impl.plugin_name, Origin(impl.plugin_name))

            def register(obj: Any, origin: Origin = origin) -> None:
                name = check(obj, origin)
                if name in into:
                    raise PluginError(
                        f"{hook_name}: the name {name!r} is registered twice, by {into[name].origin} "
                        f"and by {origin}; uninstall one of them"
                    )
                into[name] = Entry(name, obj, origin)

            impl.function(**{arg: register for arg in impl.argnames if arg == "register"})


def _check_strategy(obj: Any, origin: Origin) -> str:
    if not (isinstance(obj, type) and issubclass(obj, StrategyConfig)) or not obj.name:
        raise PluginError(
            f"{origin} registered {obj!r} as a strategy: expected a tomeplug.StrategyConfig subclass "
            "with a non-empty `name`"
        )
    return obj.name


def _check_adapter(obj: Any, origin: Origin) -> str:
    if not isinstance(obj, Adapter) or not obj.name:
        raise PluginError(
            f"{origin} registered {obj!r} as an adapter: expected a tomeplug.Adapter instance with a non-empty `name`"
        )
    return obj.name


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, created on first use (entry points load on first lookup)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


@contextlib.contextmanager
def use_registry(registry: Registry) -> Iterator[Registry]:
    """Make ``registry`` the process-wide one inside the ``with`` block (for tests and tools)."""
    global _default
    previous, _default = _default, registry
    try:
        yield registry
    finally:
        _default = previous

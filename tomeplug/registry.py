"""The plugin registry: a pluggy manager over the ``tomeplug`` entry points, loaded once and lazily.

Names: a strategy or adapter is found by its name (``"tome"``) or by its qualified name
``"<plugin>:<name>"`` (``"builtin_strategies:tome"``; the plugin is the entry point's name). When two
plugins register the same name, both are kept and reachable by their qualified names; only the bare name
is affected: using it raises :class:`NameConflictError` naming both origins and how to choose.
"""

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
PLURAL = {"strategy": "strategies", "adapter": "adapters"}


class PluginError(Exception):
    """A plugin registered something invalid (a wrong type, the same name twice itself)."""


class NameConflictError(PluginError):
    """A bare name that several plugins register was used: the error says how to choose one."""


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

    @property
    def qualified_name(self) -> str:
        """``<plugin>:<name>``: the name that stays unique when plugins register the same name."""
        return f"{self.origin.plugin}:{self.name}"


@attrs.frozen
class Conflict:
    """One name registered by several plugins: ``kind`` is ``"strategy"`` or ``"adapter"``."""

    kind: str
    name: str
    entries: tuple[Entry, ...]

    def __str__(self) -> str:
        origins = " and by ".join(str(e.origin) for e in self.entries)
        choices = " or ".join(repr(e.qualified_name) for e in self.entries)
        dists = sorted({e.origin.distribution for e in self.entries if e.origin.distribution} - {"tomeplug"})
        uninstall = f" (pip uninstall {' or '.join(dists)})" if dists else ""
        example = f"'{self.entries[0].qualified_name}'"
        usage = f"adapter={example}" if self.kind == "adapter" else f"tomeplug.patch(model, {example}, ...)"
        return (
            f"the {self.kind} name {self.name!r} is registered by {origins}, so {self.name!r} alone is ambiguous. "
            f"Choose one by its qualified name: {choices} (e.g. {usage}), or uninstall one of them{uninstall}."
        )


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
        self._entries: dict[str, list[Entry]] | None = None  # kind -> entries in registration order
        self._warned: set[Conflict] = set()

    def register_plugin(self, plugin: object, name: str | None = None, origin: Origin | None = None) -> None:
        """Register a plugin (a module or object with hook implementations) now.

        A plugin that registers an invalid entry, or one name twice itself, raises :class:`PluginError`; one
        whose hook raises (e.g. a failing import inside it) passes that error on. Either way it is not kept.
        A name another plugin registers too is kept for both (see the module docstring), with a warning.
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
        """Registered strategies by name (entries hold the config class); conflicting ones by qualified name."""
        return self._usable("strategy")

    @property
    def adapters(self) -> dict[str, Entry]:
        """Registered adapters by name (entries hold the adapter instance); conflicting ones by qualified name."""
        return self._usable("adapter")

    @property
    def conflicts(self) -> list[Conflict]:
        """Names registered by several plugins (strategies first, then adapters)."""
        self._load()
        return self._conflicts()

    def _conflicts(self) -> list[Conflict]:
        found = []
        for kind, entries in self._entries.items():
            by_name: dict[str, list[Entry]] = {}
            for entry in entries:
                by_name.setdefault(entry.name, []).append(entry)
            found += [Conflict(kind, name, tuple(same)) for name, same in by_name.items() if len(same) > 1]
        return found

    @property
    def failures(self) -> list[PluginFailure]:
        """Plugins that failed to load or register, with the reason."""
        self._load()
        return list(self._failures)

    def strategy(self, name: str) -> type[StrategyConfig]:
        """The config class of a strategy by name or qualified name; an unknown name raises and lists the
        installed ones, a name several plugins register raises :class:`NameConflictError`."""
        return self._resolve("strategy", name).obj

    def adapter(self, name: str) -> Adapter:
        """An adapter by name or qualified name, resolved as :meth:`strategy` resolves strategies."""
        return self._resolve("adapter", name).obj

    def adapter_for(self, model: object, target: str = "encoder") -> Adapter:
        """The adapter of ``target`` whose ``matches(model)`` is true; none raises and lists the adapters of
        that target, an unknown target raises and names the known ones.

        Two adapters of the same name (from different plugins) that both match raise
        :class:`NameConflictError`: pass ``adapter="<plugin>:<name>"`` to choose.
        """
        self.check_target(target)
        matching = [e for e in self._entries["adapter"] if e.obj.target == target and e.obj.matches(model)]
        if matching:
            rivals = [e for e in matching if e.name == matching[0].name]
            if len(rivals) > 1:
                raise NameConflictError(f"{Conflict('adapter', rivals[0].name, tuple(rivals))} Both match this model.")
            return matching[0].obj
        candidates = {name: e for name, e in self.adapters.items() if e.obj.target == target}
        kind, where = ("", "its image encoder") if target == "encoder" else (f"{target} ", f"its {target} module")
        raise TypeError(
            f"no {kind}adapter supports {type(model).__module__}.{type(model).__qualname__}; installed {kind}adapters: "
            + "; ".join(f"{name} ({e.obj.describe()})" for name, e in candidates.items())
            + f". Pass the model (or {where}) one of these supports, or install an adapter plugin."
        )

    @property
    def targets(self) -> list[str]:
        """The targets of the registered adapters (``"encoder"`` always among them)."""
        self._load()
        return sorted({"encoder"} | {e.obj.target for e in self._entries["adapter"]})

    def targets_of(self, model: object) -> list[str]:
        """The targets whose registered adapters match ``model`` (e.g. ``["encoder", "memory_attention"]``
        for a SAM 2 model, ``["memory_attention"]`` for its ``MemoryAttention`` alone)."""
        self._load()
        return sorted({e.obj.target for e in self._entries["adapter"] if e.obj.matches(model)})

    def check_target(self, target: str) -> None:
        """Raise ValueError, naming the known targets, unless some registered adapter has ``target``."""
        if target not in self.targets:
            raise ValueError(
                f"unknown target {target!r}; the registered adapters merge the targets {', '.join(self.targets)}"
            )

    def _usable(self, kind: str) -> dict[str, Entry]:
        """Every entry of ``kind`` by the name that reaches it: bare if unique, else qualified."""
        self._load()
        names = [e.name for e in self._entries[kind]]
        return {e.name if names.count(e.name) == 1 else e.qualified_name: e for e in self._entries[kind]}

    def _resolve(self, kind: str, name: str) -> Entry:
        self._load()
        plugin, _, bare = name.rpartition(":")
        found = [e for e in self._entries[kind] if e.name == bare and (not plugin or e.origin.plugin == plugin)]
        if len(found) > 1:
            raise NameConflictError(str(Conflict(kind, bare, tuple(found))))
        if not found:
            installed = ", ".join(sorted(self._usable(kind))) or "none"
            raise KeyError(
                f"unknown {kind} {name!r}; installed {PLURAL[kind]}: {installed}. "
                "Install a plugin that provides it, or pick one of these."
            )
        return found[0]

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
        if self._entries is None:
            self._collect()

    def _collect(self) -> None:
        self._entries = {
            "strategy": self._call("tomeplug_register_strategies", _check_strategy),
            "adapter": self._call("tomeplug_register_adapters", _check_adapter),
        }
        for conflict in self._conflicts():
            if conflict not in self._warned:
                self._warned.add(conflict)
                warnings.warn(f"tomeplug: {conflict}", RuntimeWarning, stacklevel=3)

    def _call(self, hook_name: str, check) -> list[Entry]:
        entries: list[Entry] = []
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():  # in registration order
            origin = self._origins.get(impl.plugin_name, Origin(impl.plugin_name))
            own: set[str] = set()

            def register(obj: Any, origin: Origin = origin, own: set[str] = own) -> None:
                name = check(obj, origin)
                if name in own:
                    raise PluginError(f"{hook_name}: {origin} registers the name {name!r} twice")
                own.add(name)
                entries.append(Entry(name, obj, origin))

            impl.function(**{arg: register for arg in impl.argnames if arg == "register"})
        return entries


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
    if not isinstance(obj.target, str) or not obj.target:
        raise PluginError(f"{origin} registered the adapter {obj.name!r} with target {obj.target!r}: expected a name")
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

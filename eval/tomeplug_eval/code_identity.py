"""The identity of the merging code a run uses: tomeplug's own source, and each used plugin's distribution.

A merged run's numbers depend on more than its config: on the code of core, the built-in strategies and
the adapters (:func:`merging_code_digest`, a hash of their source files), and on the plugin that provides
each strategy the run uses (its distribution, version and source). The run key and the per-item cache key
include this identity (:mod:`.run_spec`), so editing the merging code or installing another version of a
plugin makes a finished run a new one instead of "finished earlier". A strategy whose plugin is no longer
installed is unknown to the registry, which raises before anything is skipped or computed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tomeplug.registry import get_registry

MERGING_PACKAGES = ("tomeplug", "tomeplug_strategies", "tomeplug_adapters")


def source_digest(module_name: str) -> str | None:
    """A hash of a module's Python source: every ``.py`` file of its package, or its one file; None if it has none."""
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = Path(file)
    files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
    sha = hashlib.sha1()
    for source in files:
        sha.update(source.relative_to(path.parent).as_posix().encode() + b"\0" + source.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


@functools.cache
def merging_code_digest() -> str:
    """One hash of the source of :data:`MERGING_PACKAGES` (computed once per process)."""
    return hashlib.sha1(str([source_digest(name) for name in MERGING_PACKAGES]).encode()).hexdigest()[:16]


def strategy_names(strategy: str, layers: Any, mix: str) -> list[str]:
    """The strategies a run uses: ``strategy``, or for ``mix`` each one named in the ``{block: strategy}`` mapping."""
    if strategy != mix:
        return [strategy]
    values: Iterable[Any] = layers.values() if isinstance(layers, Mapping) else ()
    names = {v if isinstance(v, str) else v.get("strategy") for v in values if isinstance(v, (str, Mapping))}
    return sorted(str(n) for n in names if n is not None)


def plugin_identity(name: str) -> dict[str, Any] | None:
    """The plugin behind strategy ``name``: its distribution, version and source hash (an editable install's
    edits change no version); None for a built-in, which :func:`merging_code_digest` covers. An unknown
    (e.g. uninstalled) strategy raises the registry's ``KeyError``."""
    registry = get_registry()
    top = registry.strategy(name).__module__.partition(".")[0]
    if top in MERGING_PACKAGES:
        return None
    origin = registry.strategies[name].origin
    return {"distribution": origin.distribution, "version": origin.version, "source": source_digest(top)}


def merging_identity(strategy: str, layers: Any, mix: str) -> dict[str, Any]:
    """The merging code a run uses: ``{"source": merging_code_digest(), "plugins": {strategy: plugin identity}}``."""
    plugins = {name: plugin_identity(name) for name in strategy_names(strategy, layers, mix)}
    return {"source": merging_code_digest(), "plugins": {k: v for k, v in plugins.items() if v is not None}}

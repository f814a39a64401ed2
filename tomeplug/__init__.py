"""tomeplug: training-free token merging for Segment Anything, as plugins.

``tomeplug.patch(model, "tome", layers=[0, 4, 5], r=0.5)`` patches an official model in place; the
returned handle (or ``tomeplug.unpatch(model)``) undoes it. Importing tomeplug loads no plugin and no
model library: the registry scans the ``tomeplug`` entry points on its first lookup.
"""

from tomeplug.adapter import Adapter
from tomeplug.config import StrategyConfig
from tomeplug.hookspecs import hookimpl
from tomeplug.patching import PatchHandle, active_patch, patch, unpatch
from tomeplug.plan import MergePlan
from tomeplug.registry import Registry, get_registry, use_registry

__version__ = "0.1.0"


def list_strategies() -> list[str]:
    """Names of the registered strategies."""
    return sorted(get_registry().strategies)


def list_adapters() -> list[str]:
    """Names of the registered adapters."""
    return sorted(get_registry().adapters)


__all__ = [
    "Adapter",
    "MergePlan",
    "PatchHandle",
    "Registry",
    "StrategyConfig",
    "active_patch",
    "get_registry",
    "hookimpl",
    "list_adapters",
    "list_strategies",
    "patch",
    "unpatch",
    "use_registry",
]

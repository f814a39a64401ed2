"""tomeplug: training-free token merging for Segment Anything, as plugins.

``tomeplug.patch(model, "tome", layers=[0, 4, 5], r=0.5)`` patches an official model in place; the
returned handle (or ``tomeplug.unpatch(model)``) undoes it. Each selected block gets a frozen
:class:`Setting`: the strategy's config (the algorithm, ``r`` and its own parameters) plus the
application options (``scope``, ``metric``, ``prop_attn``, ``exclude_padding``, ``memory_r``). Strategy authors find
their building blocks here too (``bipartite_plan``, ``cell_plan``, ``CellStrategyConfig``, ...).
Importing tomeplug loads no plugin and no model library: the registry scans the ``tomeplug`` entry
points on its first lookup.
"""

from tomeplug.adapter import Adapter
from tomeplug.cells import CellStrategyConfig, cell_destinations, cell_plan
from tomeplug.config import StrategyConfig
from tomeplug.hookspecs import hookimpl
from tomeplug.matching import alternate_split, bipartite_plan, cosine_similarity
from tomeplug.patching import PatchHandle, active_patch, patch, unpatch
from tomeplug.plan import MergePlan, log_size_bias
from tomeplug.presets import Preset
from tomeplug.registry import Registry, get_registry, use_registry
from tomeplug.setting import Setting

__version__ = "0.1.0"


def list_strategies() -> list[str]:
    """Names of the registered strategies."""
    return sorted(get_registry().strategies)


def list_adapters() -> list[str]:
    """Names of the registered adapters."""
    return sorted(get_registry().adapters)


def tune(model, images, target="flops=0.8", **options):
    """The most faithful schedule meeting ``target`` (``"flops=0.8"``, ``{"speedup": 1.2}``), searched on
    calibration ``images`` against the unmerged model: ``(schedule, report)``; ``tomeplug.patch(model, None,
    layers=schedule)`` applies it. The search lives in ``tomeplug_eval.tune`` (``pip install "tomeplug[eval]"``),
    which documents ``options``; it is imported here only when called."""
    try:
        from tomeplug_eval.tune import tune as search
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"tomeplug.tune needs the evaluation package and its dependencies ({error.name} is missing): "
            'pip install "tomeplug[eval]"'
        ) from error
    return search(model, images, target, **options)


__all__ = [
    "Adapter",
    "CellStrategyConfig",
    "MergePlan",
    "PatchHandle",
    "Preset",
    "Registry",
    "Setting",
    "StrategyConfig",
    "active_patch",
    "alternate_split",
    "bipartite_plan",
    "cell_destinations",
    "cell_plan",
    "cosine_similarity",
    "get_registry",
    "hookimpl",
    "list_adapters",
    "list_strategies",
    "log_size_bias",
    "patch",
    "tune",
    "unpatch",
    "use_registry",
]

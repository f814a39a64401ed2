"""patch / unpatch: the thin front door that resolves, validates and delegates to an adapter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from torch import nn

from tomeplug.adapter import Adapter
from tomeplug.classswap import is_swapped, restore_class
from tomeplug.config import StrategyConfig
from tomeplug.registry import get_registry
from tomeplug.schedule import StrategyLike, resolve_schedule

HANDLE_ATTR = "_tomeplug_patch"
CONFIG_ATTR = "tomeplug_config"
STATE_PREFIX = "tomeplug_"  # adapters name every attribute they attach to a module with this prefix


@attrs.define(eq=False)
class PatchHandle:
    """The active patch of a model: its adapter and per-block configs. Also a context manager."""

    model: nn.Module
    adapter: str
    schedule: dict[int, StrategyConfig]

    def remove(self) -> None:
        """Undo this patch (nothing happens if the model was unpatched or patched anew since)."""
        if getattr(self.model, HANDLE_ATTR, None) is self:
            unpatch(self.model)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of the schedule."""
        return {"adapter": self.adapter, "layers": {i: c.to_dict() for i, c in self.schedule.items()}}

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def patch(
    model: nn.Module,
    strategy: StrategyLike | None = None,
    layers: Iterable[int] | Mapping[int, StrategyLike] | str | None = None,
    *,
    adapter: str | Adapter | None = None,
    **params: Any,
) -> PatchHandle:
    """Patch ``model`` in place so the selected blocks merge tokens; returns a handle that undoes it.

    Args:
        model: an official model or its image encoder (any model a registered adapter matches).
        strategy: a registered strategy name, a config object, or ``{"strategy": name, **params}``.
        layers: block indices, a ``{block: strategy}`` mapping mixing strategies, a preset name such as
            ``"paper"`` (the published schedule for this model; see :mod:`tomeplug.presets`), or ``None`` (all).
        adapter: an adapter name or instance; by default the registered adapter that matches the model.
        **params: the strategy's parameters, e.g. ``r=0.5`` (the merge fraction).

    Patching a patched model replaces the earlier patch.
    """
    registry = get_registry()
    if adapter is None:
        adapter = registry.adapter_for(model)
    elif isinstance(adapter, str):
        adapter = registry.adapter(adapter)
    blocks = adapter.blocks(model)
    schedule = resolve_schedule(layers, strategy, params, len(blocks), registry, adapter.name)
    for index, config in schedule.items():
        if config.scope not in adapter.scopes:
            raise ValueError(
                f"block {index}: adapter {adapter.name!r} supports the merge scopes {', '.join(adapter.scopes)}, "
                f"not {config.scope!r}"
            )
    unpatch(model)
    for index, config in schedule.items():
        adapter.patch_block(blocks[index], config)
        if not any(is_swapped(m) for m in blocks[index].modules()):
            unpatch(model)
            raise RuntimeError(f"adapter {adapter.name!r} patched nothing in block {index}")
    try:
        adapter.patch_model(model, schedule)
    except BaseException:
        unpatch(model)
        raise
    handle = PatchHandle(model, adapter.name, schedule)
    setattr(model, HANDLE_ATTR, handle)
    return handle


def unpatch(model: nn.Module) -> bool:
    """Restore every patched module of ``model``; returns whether anything was patched."""
    found = False
    for module in model.modules():
        if is_swapped(module):
            restore_class(module)
            found = True
        for name in [n for n in module.__dict__ if n.startswith(STATE_PREFIX)]:
            del module.__dict__[name]  # the config and any per-module state an adapter attached
    model.__dict__.pop(HANDLE_ATTR, None)
    return found


def active_patch(model: nn.Module) -> PatchHandle | None:
    """The handle of the patch currently applied to ``model``, if any."""
    return getattr(model, HANDLE_ATTR, None)

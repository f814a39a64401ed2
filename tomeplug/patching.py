"""patch / unpatch: the thin front door that resolves, validates and delegates to an adapter.

A patch is transactional: after any ``patch`` call, successful or not, the model is either fully in the
new state or exactly in the previous one, and exactly one handle describes it. The handle lives on the
patched model and every patched block points back to it, so patching an enclosing model (the whole SAM
after its encoder) or an enclosed one (the encoder after the whole SAM) replaces the earlier patch
instead of stacking on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from torch import nn

from tomeplug.adapter import Adapter
from tomeplug.classswap import is_swapped, restore_class
from tomeplug.registry import get_registry
from tomeplug.schedule import StrategyLike, resolve_schedule
from tomeplug.setting import Setting

HANDLE_ATTR = "_tomeplug_patch"  # on the patched model: its handle
STATE_PREFIX = "tomeplug_"  # adapters name every attribute they attach to a module with this prefix
SETTING_ATTR = "tomeplug_setting"  # on every swapped module: its block's setting
OWNER_ATTR = "tomeplug_handle"  # on every patched block: the handle of the patch it belongs to


@attrs.define(eq=False, repr=False)
class PatchHandle:
    """The active patch of a model: its adapter and per-block settings. Also a context manager."""

    model: nn.Module
    adapter: str
    schedule: dict[int, Setting]
    implementation: Adapter

    def remove(self) -> None:
        """Undo this patch (nothing happens if the model was unpatched or patched anew since)."""
        if getattr(self.model, HANDLE_ATTR, None) is self:
            unpatch(self.model)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of the schedule: every block's strategy, parameters and options."""
        return {"adapter": self.adapter, "layers": {i: s.to_dict() for i, s in self.schedule.items()}}

    def __repr__(self) -> str:
        active = "active" if getattr(self.model, HANDLE_ATTR, None) is self else "removed"
        names = sorted({s.name for s in self.schedule.values()})
        return (
            f"<PatchHandle {active}: {self.adapter} on {type(self.model).__name__}, "
            f"{'/'.join(names)} in blocks {list(self.schedule)}>"
        )

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
        strategy: a registered strategy name, a config object, a :class:`tomeplug.Setting`, or
            ``{"strategy": name, **params}``; None when ``layers`` is a mapping.
        layers: block indices, a ``{block: strategy}`` mapping mixing strategies, a preset name such as
            ``"paper"`` (the published schedule for this model, declared by its adapter), or ``None`` (all).
        adapter: an adapter name or instance; by default the registered adapter that matches the model.
        **params: flat keywords: the strategy's parameters, e.g. ``r=0.5`` (the merge fraction), and the
            application options ``scope``, ``metric``, ``prop_attn``, ``exclude_padding``.

    Patching a patched model (or a model enclosing, or enclosed by, a patched one) replaces the earlier
    patch. If anything fails, the model is left exactly as it was, earlier patch included.
    """
    registry = get_registry()
    if adapter is None:
        adapter = registry.adapter_for(model)
    elif isinstance(adapter, str):
        adapter = registry.adapter(adapter)
    blocks = adapter.blocks(model)
    schedule = resolve_schedule(layers, strategy, params, len(blocks), registry, adapter)
    for index, setting in schedule.items():
        if setting.scope not in adapter.scopes:
            raise ValueError(
                f"block {index}: adapter {adapter.name!r} supports the merge scopes {', '.join(adapter.scopes)}, "
                f"not {setting.scope!r}"
            )
    previous = _handles_touching(model)
    for handle in previous:
        _strip(handle.model)
    handle = PatchHandle(model, adapter.name, schedule, adapter)
    try:
        _apply(handle)
    except BaseException:
        _strip(model)
        for earlier in previous:
            _apply(earlier)
        raise
    return handle


def unpatch(model: nn.Module) -> bool:
    """Undo every patch that touches ``model`` (its own, or an enclosing model's); returns whether one did."""
    handles = _handles_touching(model)
    for handle in handles:
        _strip(handle.model)
    return _strip(model) or bool(handles)


def active_patch(model: nn.Module) -> PatchHandle | None:
    """The handle of the patch currently applied to ``model`` or to a model enclosing it, if any."""
    handles = _handles_touching(model)
    return handles[0] if handles else None


def _apply(handle: PatchHandle) -> None:
    """Patch every block of ``handle``'s schedule and attach the handle; raises on an adapter's failure."""
    model, adapter = handle.model, handle.implementation
    blocks = adapter.blocks(model)
    for index in handle.schedule:
        adapter.patch_block(model, index, handle.schedule)
        if not any(is_swapped(m) for m in blocks[index].modules()):
            raise RuntimeError(f"adapter {adapter.name!r} patched nothing in block {index}")
        blocks[index].__dict__[OWNER_ATTR] = handle
    model.__dict__[HANDLE_ATTR] = handle


def _handles_touching(model: nn.Module) -> list[PatchHandle]:
    """The distinct active handles whose patch covers a module of ``model``: its own first."""
    found = [getattr(model, HANDLE_ATTR, None)] + [m.__dict__.get(OWNER_ATTR) for m in model.modules()]
    unique = {id(h): h for h in found if h is not None and getattr(h.model, HANDLE_ATTR, None) is h}
    return list(unique.values())


def _strip(model: nn.Module) -> bool:
    """Restore every swapped module of ``model`` and drop tomeplug's attributes; returns whether any was swapped."""
    found = False
    for module in model.modules():
        if is_swapped(module):
            restore_class(module)
            found = True
        for name in [n for n in module.__dict__ if n.startswith(STATE_PREFIX)]:
            del module.__dict__[name]  # the setting, the owner and any per-module state an adapter attached
    model.__dict__.pop(HANDLE_ATTR, None)
    return found

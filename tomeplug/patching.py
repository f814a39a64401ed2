"""patch / unpatch: the thin front door that resolves, validates and delegates to an adapter.

A patch is transactional: after any ``patch`` call, successful or not, the model is either fully in the
new state or exactly in the previous one, and exactly one handle per target describes it (a target is a
merging site: the image encoder, SAM 2's memory attention; see :attr:`tomeplug.Adapter.target`). The
handles live on the patched model and every patched block points back to its handle, so patching an
enclosing model (the whole SAM after its encoder) or an enclosed one (the encoder after the whole SAM)
replaces the earlier patch of that target instead of stacking on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from torch import nn

from tomeplug.adapter import Adapter, class_path
from tomeplug.classswap import is_swapped, restore_class
from tomeplug.registry import Registry, get_registry
from tomeplug.schedule import StrategyLike, resolve_schedule
from tomeplug.setting import Setting

HANDLES_ATTR = "_tomeplug_patches"  # on the patched model: {target: its handle}
STATE_PREFIX = "tomeplug_"  # adapters name every attribute they attach to a module with this prefix
SETTING_ATTR = "tomeplug_setting"  # on every swapped module: its block's setting
OWNER_ATTR = "tomeplug_handle"  # on every patched block: the handle of the patch it belongs to
DEFAULT_TARGET = "encoder"


@attrs.define(eq=False, repr=False)
class PatchHandle:
    """The active patch of one target of a model: its adapter and per-block settings. Also a context manager.

    ``modules`` are the modules the patch changed (swapped classes, ``tomeplug_*`` attributes): unpatching
    this target restores exactly these, so other targets' patches of the same model stay.
    """

    model: nn.Module
    adapter: str
    schedule: dict[int, Setting]
    implementation: Adapter
    target: str = DEFAULT_TARGET
    modules: list[nn.Module] = attrs.field(factory=list)

    @property
    def active(self) -> bool:
        """Whether this patch is still applied (not unpatched or replaced since)."""
        return _handles_of(self.model).get(self.target) is self

    def remove(self) -> None:
        """Undo this patch (nothing happens if the model was unpatched or patched anew since)."""
        if self.active:
            unpatch(self.model, target=self.target)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of the schedule: target, every block's strategy, parameters and options."""
        layers = {i: s.to_dict() for i, s in self.schedule.items()}
        return {"adapter": self.adapter, "target": self.target, "layers": layers}

    def __repr__(self) -> str:
        names = sorted({s.name for s in self.schedule.values()})
        where = "blocks" if self.target == DEFAULT_TARGET else f"{self.target} blocks"
        return (
            f"<PatchHandle {'active' if self.active else 'removed'}: {self.adapter} on {type(self.model).__name__}, "
            f"{'/'.join(names)} in {where} {list(self.schedule)}>"
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
    target: str | None = None,
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
        target: which blocks merge: ``"encoder"`` (the image encoder's) or another target a registered
            adapter declares (``"memory_attention"``: SAM 2's memory-attention layers). Default: the given
            adapter's target, else ``"encoder"``, or the one other target whose adapters match the model
            (a ``MemoryAttention`` alone: ``"memory_attention"``).
        adapter: an adapter name or instance; by default the registered adapter of ``target`` that matches
            the model.
        **params: flat keywords: the strategy's parameters, e.g. ``r=0.5`` (the merge fraction), and the
            application options ``scope``, ``metric``, ``prop_attn``, ``exclude_padding``, ``memory_r``.

    A model holds one patch per target. Patching a target of a patched model (or of a model enclosing, or
    enclosed by, a patched one) replaces the earlier patch of that target; other targets' patches stay.
    If anything fails, the model is left exactly as it was, earlier patches included.
    """
    registry = get_registry()
    if target is not None:
        registry.check_target(target)
    if adapter is None:
        adapter = registry.adapter_for(model, target or _default_target(model, registry))
    elif isinstance(adapter, str):
        adapter = registry.adapter(adapter)
    if target is not None and adapter.target != target:
        raise ValueError(
            f"adapter {adapter.name!r} patches the target {adapter.target!r}, not {target!r}: pass "
            f"target={adapter.target!r}, or leave adapter out to use the {target} adapter matching the model"
        )
    target = adapter.target
    blocks = adapter.blocks(model)
    schedule = resolve_schedule(layers, strategy, params, len(blocks), registry, adapter)
    for index, setting in schedule.items():
        if setting.scope not in adapter.scopes:
            raise ValueError(
                f"block {index}: adapter {adapter.name!r} supports the merge scopes {', '.join(adapter.scopes)}, "
                f"not {setting.scope!r}"
            )
        if setting.memory_r is not None and not adapter.merges_memory:
            raise ValueError(
                f"block {index}: memory_r merges the memory that memory attention attends to; adapter {adapter.name!r} "
                f"(target {target!r}) has none: leave memory_r out, or patch target='memory_attention'"
            )
    previous = _handles_touching(model, target)
    others = [h for h in _handles_touching(model) if h.target != target]
    for handle in previous:
        _strip(handle)
    handle = PatchHandle(model, adapter.name, schedule, adapter, target)
    try:
        _apply(handle)
    except BaseException:
        _strip(handle)
        changed = {id(m) for m in handle.modules}
        for earlier in previous + [h for h in others if any(id(m) in changed for m in h.modules)]:
            _strip(earlier)  # a no-op for the earlier patch of this target; another target's is made whole again
            _apply(earlier)
        raise
    return handle


def _default_target(model: nn.Module, registry: Registry) -> str:
    """``"encoder"``, unless only adapters of one other target match ``model`` (e.g. a ``MemoryAttention``)."""
    found = registry.targets_of(model)
    return found[0] if len(found) == 1 else DEFAULT_TARGET


def unpatch(model: nn.Module, target: str | None = None) -> bool:
    """Undo every patch that touches ``model`` (its own, or an enclosing model's), of every target or of
    ``target`` only; returns whether one did."""
    if target is not None:
        get_registry().check_target(target)
    targets = [target] if target is not None else sorted({h.target for h in _handles_touching(model)})
    handles = [h for t in targets for h in _handles_touching(model, t)]
    found = [_strip(handle) for handle in handles]
    if target is None:  # whatever is left swapped (e.g. a patched model deep-copied without its handle)
        found.append(_strip_modules(model.modules()))
    return any(found) or bool(handles)


def active_patch(model: nn.Module, target: str = DEFAULT_TARGET) -> PatchHandle | None:
    """The handle of ``target``'s patch currently applied to ``model`` or to a model enclosing it, if any."""
    handles = _handles_touching(model, target)
    return handles[0] if handles else None


def _handles_of(model: nn.Module) -> dict[str, PatchHandle]:
    """The model's own active patches by target."""
    return model.__dict__.get(HANDLES_ATTR, {})


def _apply(handle: PatchHandle) -> None:
    """Patch every block of ``handle``'s schedule and attach the handle; raises on an adapter's failure.

    The modules the adapter changed are recorded in ``handle.modules`` (also when it fails half-way), and
    must not belong to another target's active patch.
    """
    model, adapter = handle.model, handle.implementation
    blocks = adapter.blocks(model)
    before = {id(m): _module_state(m) for m in model.modules()}
    others = {id(m): h for h in _handles_touching(model) if h.target != handle.target for m in h.modules}
    try:
        for index in handle.schedule:
            adapter.patch_block(model, index, handle.schedule)
            if not any(is_swapped(m) for m in blocks[index].modules()):
                raise RuntimeError(f"adapter {adapter.name!r} patched nothing in block {index}")
            blocks[index].__dict__[OWNER_ATTR] = handle
    finally:
        handle.modules = [m for m in model.modules() if _module_state(m) != before.get(id(m))]
    clash = [m for m in handle.modules if id(m) in others]
    if clash:
        holder = others[id(clash[0])]
        raise RuntimeError(
            f"adapter {adapter.name!r} ({handle.target}) changed a {class_path(clash[0])} that the {holder.target} "
            f"patch ({holder.adapter}) holds; the two targets' adapters overlap: unpatch target={holder.target!r} first"
        )
    model.__dict__[HANDLES_ATTR] = {**_handles_of(model), handle.target: handle}


def _module_state(module: nn.Module) -> tuple[type, tuple[tuple[str, int], ...]]:
    """A module's class and its ``tomeplug_*`` attributes (by identity): what a patch may change."""
    return type(module), tuple((n, id(v)) for n, v in module.__dict__.items() if n.startswith(STATE_PREFIX))


def _handles_touching(model: nn.Module, target: str | None = None) -> list[PatchHandle]:
    """The distinct active handles (of ``target``, or of every target) whose patch covers a module of
    ``model``: its own first."""
    found = list(_handles_of(model).values()) + [m.__dict__.get(OWNER_ATTR) for m in model.modules()]
    unique = {id(h): h for h in found if h is not None and h.active and target in (None, h.target)}
    return list(unique.values())


def _strip(handle: PatchHandle) -> bool:
    """Undo ``handle``'s changes to its modules and detach it; returns whether any module was swapped."""
    found = _strip_modules(handle.modules)
    handles = _handles_of(handle.model)
    if handles.get(handle.target) is handle:
        rest = {t: h for t, h in handles.items() if t != handle.target}
        if rest:
            handle.model.__dict__[HANDLES_ATTR] = rest
        else:
            del handle.model.__dict__[HANDLES_ATTR]
    return found


def _strip_modules(modules: Iterable[nn.Module]) -> bool:
    """Restore every swapped module and drop tomeplug's attributes; returns whether any was swapped."""
    found = False
    for module in modules:
        if is_swapped(module):
            restore_class(module)
            found = True
        for name in [n for n in module.__dict__ if n.startswith(STATE_PREFIX)]:
            del module.__dict__[name]  # the setting, the owner and any per-module state an adapter attached
    return found

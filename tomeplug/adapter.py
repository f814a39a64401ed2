"""The adapter contract: the code that knows one architecture and nothing of merge algorithms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import nn

from tomeplug.presets import Preset
from tomeplug.setting import Setting


class Adapter:
    """Base class of architecture adapters.

    A subclass sets ``name`` and ``scopes`` (and ``target`` if its blocks are not the image encoder's),
    recognises its models by class name in :meth:`matches` (never by importing the model library), lists
    its target's blocks in forward order, and patches one
    block at a time in :meth:`patch_block`, seeing the whole model and schedule. It patches only by
    swapping module classes (:func:`tomeplug.classswap.swap_class`) and attaching attributes named
    ``tomeplug_*``; unpatching is generic (every swapped class restored, those attributes removed). An
    adapter instance is shared by every model: it keeps no state of its own.
    """

    name: ClassVar[str] = ""
    target: ClassVar[str] = "encoder"
    """Which part of a model its blocks are: ``"encoder"`` (the image encoder's blocks) or another merging
    site, e.g. ``"memory_attention"`` (SAM 2's memory-attention layers). A model can hold one patch per target."""
    scopes: ClassVar[tuple[str, ...]] = ("attn",)
    """The merge scopes (see :class:`tomeplug.Setting`) this adapter implements."""
    merges_memory: ClassVar[bool] = False
    """Whether its blocks attend to a memory whose tokens it can merge (the ``memory_r`` option)."""
    presets: ClassVar[tuple[Preset, ...]] = ()
    """Named schedules published for this adapter's models (``layers="paper"``)."""

    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter knows ``model`` (judged by class names only)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short phrase naming the model classes this adapter supports."""
        return type(self).__doc__.strip().splitlines()[0] if type(self).__doc__ else self.name

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The target's transformer blocks in forward order (block i is ``blocks(model)[i]``): the image
        encoder's for target ``"encoder"``."""
        raise NotImplementedError

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Make block ``index`` of ``model`` merge tokens as ``schedule[index]`` says.

        Called once per selected block, in order, with the whole schedule: what spans blocks (e.g. the
        encoder's loop for ``span`` scope) is patched here too, idempotently, from the schedule alone.
        Swapped modules carry their block's setting as ``tomeplug_setting``.
        """
        raise NotImplementedError


def class_path(obj: object) -> str:
    """``module.QualName`` of an object's class (the original class of a patched module), for matching by name."""
    cls = getattr(type(obj), "_tomeplug_base", type(obj))
    return f"{cls.__module__}.{cls.__qualname__}"


def class_paths(obj: object) -> set[str]:
    """``module.QualName`` of an object's class and all its bases (matching subclasses by name)."""
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(obj).__mro__}


def sole_module(model: nn.Module, target: str, packages: str | tuple[str, ...]) -> nn.Module | None:
    """``model`` if it is a ``target`` (a class path, subclasses included); else the one ``target`` among the
    modules of a model whose class (or a base of it) comes from ``packages`` (module-path prefixes); else None.

    Raises:
        ValueError: the model holds more than one (each must be patched on its own).
    """
    if target in class_paths(model):
        return model
    if not any(path.startswith(packages) for path in class_paths(model)):
        return None
    found = [module for module in model.modules() if target in class_paths(module)]
    if len(found) > 1:
        name = target.rsplit(".", 1)[-1]
        raise ValueError(f"{class_path(model)} holds {len(found)} {name}s; patch each {name} (a module) on its own")
    return found[0] if found else None

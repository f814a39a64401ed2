"""The adapter contract: the code that knows one architecture and nothing of merge algorithms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import nn

from tomeplug.config import StrategyConfig


class Adapter:
    """Base class of architecture adapters.

    A subclass sets ``name``, recognises its models by class name in :meth:`matches` (never by importing
    the model library), lists the image encoder's blocks in forward order, and patches one block by
    swapping module classes (see :mod:`tomeplug.classswap`) and attaching the block's frozen config as
    ``tomeplug_config``. Unpatching is generic: every swapped module gets its class back.
    """

    name: ClassVar[str] = ""
    scopes: ClassVar[tuple[str, ...]] = ("attn",)
    """The merge scopes (see :class:`tomeplug.StrategyConfig`) this adapter implements."""

    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter knows ``model`` (judged by class names only)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short phrase naming the model classes this adapter supports."""
        return type(self).__doc__.strip().splitlines()[0] if type(self).__doc__ else self.name

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The image encoder's transformer blocks in forward order (block i is ``blocks(model)[i]``)."""
        raise NotImplementedError

    def patch_block(self, block: nn.Module, config: StrategyConfig) -> None:
        """Make ``block`` merge tokens with ``config``; it must be undone by restoring swapped classes."""
        raise NotImplementedError

    def patch_model(self, model: nn.Module, schedule: Mapping[int, StrategyConfig]) -> None:
        """Optional: patch beyond single blocks once every block is patched (e.g. a merge scope spanning
        blocks needs the encoder's loop). Undone like the blocks: swap classes, name attributes ``tomeplug_*``."""


def class_path(obj: object) -> str:
    """``module.QualName`` of an object's class (the original class of a patched module), for matching by name."""
    cls = getattr(type(obj), "_tomeplug_base", type(obj))
    return f"{cls.__module__}.{cls.__qualname__}"


def class_paths(obj: object) -> set[str]:
    """``module.QualName`` of an object's class and all its bases (matching subclasses by name)."""
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(obj).__mro__}

"""Hook specifications: what a tomeplug plugin may implement. Signatures and docs only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("tomeplug")
hookimpl = pluggy.HookimplMarker("tomeplug")


@hookspec
def tomeplug_register_strategies(register: Callable[[type], None]) -> None:
    """Register merge strategies: call ``register(ConfigClass)`` once per strategy.

    ``ConfigClass`` subclasses :class:`tomeplug.StrategyConfig`, sets ``name`` and implements ``plan``.
    """


@hookspec
def tomeplug_register_adapters(register: Callable[[Any], None]) -> None:
    """Register architecture adapters: call ``register(adapter)`` once per adapter instance.

    ``adapter`` subclasses :class:`tomeplug.Adapter` (a ``name``, ``matches``, ``blocks``, ``patch_block``
    and ``unpatch_block``).
    """

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

    ``ConfigClass`` is a frozen attrs subclass of :class:`tomeplug.StrategyConfig` that sets ``name`` and
    ``max_r``, declares only its own parameters (``r`` is inherited) and implements ``merge_plan`` (or
    ``plan``). Application options (scope, metric, proportional attention, padding) are not a strategy's:
    set ``supports_padding_mask = True`` if the plan honours its ``valid`` argument.
    """


@hookspec
def tomeplug_register_adapters(register: Callable[[Any], None]) -> None:
    """Register architecture adapters: call ``register(adapter)`` once per adapter instance.

    ``adapter`` is an instance of a :class:`tomeplug.Adapter` subclass: a ``name``, the ``scopes`` it
    implements, optional ``presets``, and ``matches(model)``, ``blocks(model)`` and
    ``patch_block(model, index, schedule)``. Undoing a patch is generic (swapped classes are restored), so
    there is no unpatch hook; an adapter keeps no state of its own.
    """

"""Resolving a strategy and a layer schedule into one frozen config per selected block."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from tomeplug.config import StrategyConfig
from tomeplug.presets import find_preset
from tomeplug.registry import Registry

StrategyLike = str | StrategyConfig | Mapping[str, Any]


def resolve_strategy(
    strategy: StrategyLike, params: Mapping[str, Any], registry: Registry, defaults: Mapping[str, Any] | None = None
) -> StrategyConfig:
    """Turn a strategy name, config object or ``{"strategy": name, **params}`` dict into a config.

    ``params`` override the config's fields; unknown parameter names raise and list the known ones.
    ``defaults`` (a preset's parameters) fill the fields a name or mapping leaves unset, where they exist.
    """
    if isinstance(strategy, Mapping):
        strategy = dict(strategy)
        name = strategy.pop("strategy", None)
        if not isinstance(name, str):
            raise TypeError(f"a strategy given as a mapping needs a 'strategy' name, got {strategy!r}")
        return resolve_strategy(name, {**strategy, **params}, registry, defaults)
    if isinstance(strategy, StrategyConfig):
        cls, base = type(strategy), attrs.asdict(strategy, recurse=False)
    elif isinstance(strategy, str):
        cls = registry.strategy(strategy)
        base = {k: v for k, v in (defaults or {}).items() if k in attrs.fields_dict(cls)}
    else:
        raise TypeError(
            f"strategy must be a registered name, a StrategyConfig or a mapping, got {type(strategy).__name__}"
        )
    known = [f.name for f in attrs.fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise TypeError(
            f"strategy {cls.name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(known)}"
        )
    return cls(**{**base, **params})


def resolve_schedule(
    layers: Iterable[int] | Mapping[int, StrategyLike] | str | None,
    strategy: StrategyLike | None,
    params: Mapping[str, Any],
    depth: int,
    registry: Registry,
    adapter: str = "",
) -> dict[int, StrategyConfig]:
    """One config per selected block index, checked against the encoder's ``depth``.

    ``layers`` is ``None`` (every block), an iterable of block indices sharing ``strategy``, a mapping
    ``{block: strategy}`` mixing strategies per block (``params`` apply to every entry), or the name of a
    preset made for this ``adapter``'s model (its parameters are defaults).
    """
    defaults: Mapping[str, Any] = {}
    if isinstance(layers, str):
        preset = find_preset(layers, adapter, depth)
        layers, defaults = preset.layers, preset.params
    if isinstance(layers, Mapping):
        wanted = {index: resolve_strategy(value, params, registry, defaults) for index, value in layers.items()}
    else:
        if strategy is None:
            raise TypeError("strategy is required unless layers is a {block: strategy} mapping")
        config = resolve_strategy(strategy, params, registry, defaults)
        if layers is None:
            indices = list(range(depth))
        elif isinstance(layers, bytes) or not isinstance(layers, Iterable):
            raise TypeError(
                f"layers must be block indices, a {{block: strategy}} mapping, a preset name or None, got {layers!r}"
            )
        else:
            indices = list(layers)
            if len(set(indices)) != len(indices):
                raise ValueError(f"layers lists a block more than once: {indices}")
        wanted = dict.fromkeys(indices, config)
    if not wanted:
        raise ValueError(f"the schedule selects no block; choose block indices in 0..{depth - 1} (or None for all)")
    for index in wanted:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"block indices must be ints, got {index!r}")
        if not 0 <= index < depth:
            raise IndexError(
                f"block {index} is out of range: this model's image encoder has {depth} blocks (indices 0..{depth - 1})"
            )
    return dict(sorted(wanted.items()))

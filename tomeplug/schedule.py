"""Resolving a strategy and a layer schedule into one frozen :class:`~tomeplug.Setting` per selected block."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from tomeplug.config import StrategyConfig
from tomeplug.presets import find_preset
from tomeplug.registry import Registry
from tomeplug.setting import OPTION_NAMES, Setting

StrategyLike = str | StrategyConfig | Setting | Mapping[str, Any]


def resolve_setting(
    strategy: StrategyLike, params: Mapping[str, Any], registry: Registry, defaults: Mapping[str, Any] | None = None
) -> Setting:
    """Turn a strategy name, config, setting or ``{"strategy": name, **params}`` mapping into a setting.

    ``params`` are flat keywords: the application options (:data:`tomeplug.setting.OPTION_NAMES`) go to the
    setting, the rest to the strategy's config, overriding what ``strategy`` holds; an unknown name raises
    and lists the valid ones. ``defaults`` (a preset's parameters) fill what a name or mapping leaves unset.
    """
    if isinstance(strategy, Mapping):
        strategy = dict(strategy)
        name = strategy.pop("strategy", None)
        if not isinstance(name, str):
            raise TypeError(f"a strategy given as a mapping needs a 'strategy' name, got {strategy!r}")
        return resolve_setting(name, {**strategy, **params}, registry, defaults)
    options: dict[str, Any] = {}
    if isinstance(strategy, Setting):
        options = attrs.asdict(strategy, recurse=False)
        strategy = options.pop("strategy")
    if isinstance(strategy, StrategyConfig):
        cls, base = type(strategy), attrs.asdict(strategy, recurse=False)
    elif isinstance(strategy, str):
        cls = registry.strategy(strategy)
        own = attrs.fields_dict(cls)
        base = {k: v for k, v in (defaults or {}).items() if k in own}
        options = {k: v for k, v in (defaults or {}).items() if k in OPTION_NAMES}
    else:
        raise TypeError(
            "strategy must be a registered name, a StrategyConfig, a Setting or a mapping, "
            f"got {type(strategy).__name__}"
        )
    known = [f.name for f in attrs.fields(cls)]
    unknown = sorted(set(params) - set(known) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"strategy {cls.name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(known)}; every strategy also takes the options: {', '.join(OPTION_NAMES)}"
        )
    own_params = {k: v for k, v in params.items() if k not in OPTION_NAMES}
    options |= {k: v for k, v in params.items() if k in OPTION_NAMES}
    return Setting(strategy=cls(**{**base, **own_params}), **options)


def resolve_schedule(
    layers: Iterable[int] | Mapping[int, StrategyLike] | str | None,
    strategy: StrategyLike | None,
    params: Mapping[str, Any],
    depth: int,
    registry: Registry,
    adapter: Any = None,
) -> dict[int, Setting]:
    """One setting per selected block index, checked against the encoder's ``depth``.

    ``layers`` is ``None`` (every block), an iterable of block indices sharing ``strategy``, a mapping
    ``{block: strategy}`` mixing strategies per block (``params`` apply to every entry; ``strategy`` must
    then be None), or the name of a preset that ``adapter`` declares for its model (its parameters are
    defaults).
    """
    defaults: Mapping[str, Any] = {}
    if isinstance(layers, str):
        if adapter is None:
            raise TypeError(f"layers={layers!r} names a preset, which needs the model's adapter")
        others = [e.obj for e in registry.adapters.values() if e.obj is not adapter]
        preset = find_preset(layers, adapter, depth, others)
        layers, defaults = preset.layers, preset.params
    if isinstance(layers, Mapping):
        if strategy is not None:
            raise TypeError(
                f"layers is a {{block: strategy}} mapping, which names every block's strategy; strategy={strategy!r} "
                "would be ignored: pass strategy=None (shared parameters go in the keywords)"
            )
        wanted = {index: resolve_setting(value, params, registry, defaults) for index, value in layers.items()}
    else:
        if strategy is None:
            raise TypeError("strategy is required unless layers is a {block: strategy} mapping")
        setting = resolve_setting(strategy, params, registry, defaults)
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
        wanted = dict.fromkeys(indices, setting)
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

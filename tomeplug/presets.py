"""Named layer schedules from the literature, e.g. ``tomeplug.patch(sam, "pitome", layers="paper")``.

Adapters declare the presets made for their models (``Adapter.presets``); core only looks them up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs


@attrs.frozen
class Preset:
    """A published schedule for one model: its blocks and the parameters the publication used.

    ``params`` are defaults: a parameter the strategy lacks is skipped, and explicit ones win.
    """

    name: str
    model: str
    depth: int
    layers: tuple[int, ...]
    params: dict[str, Any] = attrs.field(factory=dict)


PAPER_PARAMS: dict[str, Any] = {"r": 0.5, "margin": 0.5, "alpha": 1.0}
"""PiToMe (NeurIPS 2024)'s parameters for its published schedules."""


def find_preset(name: str, adapter: Any, depth: int, others: Iterable[Any] = ()) -> Preset:
    """The preset called ``name`` that ``adapter`` declares for a model of ``depth`` blocks, or a clear error.

    ``others`` (the other registered adapters) only make the error say which models a name was made for.
    """
    for preset in adapter.presets:
        if preset.name == name and preset.depth == depth:
            return preset
    named = [p for a in (adapter, *others) for p in a.presets if p.name == name]
    if not named:
        known = sorted({p.name for a in (adapter, *others) for p in a.presets})
        raise KeyError(f"unknown schedule preset {name!r}; presets: {', '.join(known) or 'none'}")
    made_for = "; ".join(sorted({f"{p.model} ({p.depth} blocks)" for p in named}))
    raise ValueError(
        f"schedule preset {name!r} was made for {made_for}, not for this {adapter.name} model with {depth} blocks; "
        "pass block indices instead"
    )

"""Named layer schedules from the literature, e.g. ``tomeplug.patch(sam, "pitome", layers="paper")``."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Preset:
    """A published schedule for one model: its blocks and the parameters the publication used.

    ``params`` are defaults: a parameter the strategy lacks is skipped, and explicit ones win.
    """

    name: str
    model: str
    adapters: tuple[str, ...]
    depth: int
    layers: tuple[int, ...]
    params: dict[str, Any] = attrs.field(factory=dict)


_PAPER_PARAMS = {"r": 0.5, "margin": 0.5, "alpha": 1.0}
PRESETS: tuple[Preset, ...] = (
    # PiToMe (NeurIPS 2024) on SAM / HQ-SAM ViT-L: 10 of 24 blocks.
    Preset(
        "paper",
        "SAM / HQ-SAM ViT-L",
        ("sam_vit", "hq_sam_vit"),
        24,
        (0, 4, 5, 10, 16, 17, 19, 20, 22, 23),
        _PAPER_PARAMS,
    ),
    # The same work's schedule for SAM 2.1 Hiera-L: 10 of 48 blocks, all in the last stages.
    Preset("paper", "SAM 2.1 Hiera-L", ("sam2_hiera",), 48, (31, 32, 34, 35, 37, 38, 44, 45, 46, 47), _PAPER_PARAMS),
)


def find_preset(name: str, adapter: str, depth: int) -> Preset:
    """The preset called ``name`` made for this adapter's model of ``depth`` blocks, or a clear error."""
    named = [p for p in PRESETS if p.name == name]
    if not named:
        known = sorted({p.name for p in PRESETS})
        raise KeyError(f"unknown schedule preset {name!r}; presets: {', '.join(known)}")
    for preset in named:
        if adapter in preset.adapters and depth == preset.depth:
            return preset
    made_for = "; ".join(f"{p.model} ({p.depth} blocks)" for p in named)
    raise ValueError(
        f"schedule preset {name!r} was made for {made_for}, not for this {adapter} model with {depth} blocks; "
        "pass block indices instead"
    )

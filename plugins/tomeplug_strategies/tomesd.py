"""ToMeSD (Bolya & Hoffman, 2023): one destination per 2x2 cell, random (seeded) or fixed."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from tomeplug_strategies.cells import CellStrategyConfig
from tomeplug_strategies.params import int_in


@attrs.frozen(kw_only=True)
class ToMeSDConfig(CellStrategyConfig):
    """ToMeSD: a destination per 2x2 cell, the other tokens matched bipartitely onto the destinations.

    Args:
        random: pick each cell's destination uniformly at random (ToMeSD's default); ``False`` picks
            the top-left token of every cell.
        seed: seed of the ``torch.Generator`` drawn afresh on every call, so the same input gives the
            same plan. One draw per cell is shared by all token groups of the call (as ToMeSD shares
            it across the batch) and is the same on every device.
    """

    name = "tomesd"

    random: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    seed: int = attrs.field(default=0, validator=int_in(0, 2**63 - 1, "the seed of the random destinations"))

    def destination_score(self, metric: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B', N) per-token score, the highest in each cell wins: seeded uniform noise, or zeros (top-left)."""
        b, n, _ = metric.shape
        if not self.random:
            return torch.zeros(b, n, device=metric.device)  # ties go to each cell's top-left token
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(n, generator=generator).to(metric.device).expand(b, n)

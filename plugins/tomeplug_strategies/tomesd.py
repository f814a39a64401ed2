"""ToMeSD (Bolya & Hoffman, 2023): one destination per 2x2 cell, random (seeded) or fixed."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from tomeplug.cells import CellStrategyConfig
from tomeplug_strategies.params import int_in


@attrs.frozen(kw_only=True)
class ToMeSDConfig(CellStrategyConfig):
    """ToMeSD: a destination per 2x2 cell, the other tokens matched bipartitely onto the destinations.

    Args:
        random: pick each cell's destination uniformly at random (ToMeSD's default); ``False`` picks
            the top-left token of every cell.
        seed: seed of the draw. The draw is a counter-based integer hash of (seed, token index):
            the same input gives the same plan, on every device, with no random-generator state (so
            ``torch.compile`` traces it without a graph break). One draw per cell is shared by all
            token groups of the call, as ToMeSD shares it across the batch.
    """

    name = "tomesd"

    random: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    seed: int = attrs.field(default=0, validator=int_in(0, 2**63 - 1, "the seed of the random destinations"))

    def destination_score(self, metric: Tensor, grid: tuple[int, int], similarity: Tensor | None = None) -> Tensor:
        """(B', N) per-token score, the highest in each cell wins: seeded uniform noise, or zeros (top-left)."""
        b, n, _ = metric.shape
        if not self.random:
            return torch.zeros(b, n, device=metric.device)  # ties go to each cell's top-left token
        return hashed_noise(n, self.seed, metric.device).expand(b, n)


def hashed_noise(n: int, seed: int, device: torch.device) -> Tensor:
    """(n,) pseudo-random float scores in [0, 2**24) (exact in float32) from an integer hash of (seed, index)."""
    x = torch.arange(n, device=device, dtype=torch.int64) + (seed * 0x9E3779B9) % 2**32  # (n,)
    for _ in range(3):  # a few rounds of xor-shift-multiply mixing, exact in int64
        x = ((x >> 16) ^ x) * 0x45D9F3B % 2**32
    return (((x >> 16) ^ x) % 2**24).float()

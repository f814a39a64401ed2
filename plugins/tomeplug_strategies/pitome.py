"""PiToMe (Tran et al., NeurIPS 2024): spectrum-preserving merging of high-energy tokens.

One family, three registered variants that differ only by class variables:

- ``pitome`` (v0): the 2 * n_merge highest-energy tokens are mergeable, split alternately by energy
  rank into sources and destinations and matched bipartitely (every source merges); the others are
  protected.
- ``pitome_v1``: the highest-energy token of each 2x2 cell is a destination; the n_merge other tokens
  most similar to a destination merge.
- ``pitome_v2``: the same destinations; the n_merge highest-energy other tokens are the sources (all
  merge), the rest are protected.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
from torch import Tensor

from tomeplug.config import StrategyConfig
from tomeplug.matching import bipartite_plan, cosine_similarity
from tomeplug.plan import MergePlan
from tomeplug_strategies.cells import CELL_MAX_R, CELL_MAX_R_REASON, cell_plan
from tomeplug_strategies.energy import pitome_energy
from tomeplug_strategies.params import real_in


@attrs.frozen(kw_only=True)
class PiToMeConfig(StrategyConfig):
    """PiToMe v0: merge among the highest-energy tokens, protect the low-energy (informative) ones.

    Args:
        margin: m, the cosine similarity above which a pair of tokens counts as redundant, in [-1, 1].
        alpha: α, the ELU's scale for pairs below the margin, > 0.
    """

    name = "pitome"
    max_r = 0.5
    max_r_reason = "the 2 * floor(r * N) highest-energy tokens are paired into sources and destinations"
    supports_padding_mask = True
    cell_destinations: ClassVar[bool] = False
    """Pick the highest-energy token of every 2x2 cell as a destination (v1, v2)."""
    protect_low_energy: ClassVar[bool] = True
    """With cell destinations: only the floor(r * N) highest-energy other tokens are sources (v2)."""

    margin: float = attrs.field(default=0.5, validator=real_in(-1.0, 1.0, "the energy's cosine-similarity margin"))
    alpha: float = attrs.field(
        default=1.0, validator=real_in(0.0, math.inf, "the energy's ELU scale below the margin", open_low=True)
    )

    def energy(self, metric: Tensor, similarity: Tensor | None = None) -> Tensor:
        """(B', N) PiToMe energy of every token; high = redundant (``similarity``: the metric's, if computed)."""
        return pitome_energy(metric, self.margin, self.alpha, similarity)

    def plan(self, metric: Tensor, grid: tuple[int, int], valid: Tensor | None = None) -> MergePlan:
        """Merge floor(r * N) high-energy tokens, by this variant's choice of sources and destinations."""
        b, n, _ = metric.shape
        n_merge = self.num_to_merge(n)
        if n_merge == 0:
            return MergePlan.identity(b, n, metric.device)
        similarity = cosine_similarity(metric.float())  # (B', N, N) once: energy and matching share it
        energy = self.energy(metric, similarity)  # (B', N)
        if self.cell_destinations:
            src_score = energy if self.protect_low_energy else None
            return cell_plan(metric, grid, n_merge, energy, src_score, self.name, valid, similarity)
        order = energy.argsort(dim=1, descending=True, stable=True)  # (B', N) highest energy first
        src, dst = order[:, 0 : 2 * n_merge : 2], order[:, 1 : 2 * n_merge : 2]  # alternate by energy rank
        protected = order[:, 2 * n_merge :]
        return bipartite_plan(metric, src, dst, n_merge, protected=protected, valid=valid, similarity=similarity)


@attrs.frozen(kw_only=True)
class PiToMeV1Config(PiToMeConfig):
    """PiToMe v1: the highest-energy token of each 2x2 cell is a destination; the rest match onto them."""

    name = "pitome_v1"
    max_r = CELL_MAX_R
    max_r_reason = CELL_MAX_R_REASON
    cell_destinations = True
    protect_low_energy = False


@attrs.frozen(kw_only=True)
class PiToMeV2Config(PiToMeV1Config):
    """PiToMe v2: v1's destinations; the highest-energy other tokens are sources, the rest protected."""

    name = "pitome_v2"
    protect_low_energy = True

"""PiToMe (Tran et al., NeurIPS 2024): spectrum-preserving merging of high-energy tokens.

One family, three registered variants sharing the energy parameters (:class:`PiToMeEnergy`):

- ``pitome`` (v0): the 2 * n_merge highest-energy tokens are mergeable, split alternately by energy
  rank into sources and destinations and matched bipartitely (every source merges); the others are
  protected.
- ``pitome_v1``: the highest-energy token of each 2x2 cell is a destination; the n_merge other tokens
  most similar to a destination merge (the cell machinery of :mod:`tomeplug.cells`).
- ``pitome_v2``: the same destinations; the n_merge highest-energy other tokens are the sources (all
  merge), the rest are protected.
"""

from __future__ import annotations

import math

import attrs
from torch import Tensor

from tomeplug.cells import CellStrategyConfig
from tomeplug.config import StrategyConfig
from tomeplug.matching import bipartite_plan, cosine_similarity
from tomeplug.plan import MergePlan
from tomeplug_strategies.energy import pitome_energy
from tomeplug_strategies.params import real_in


@attrs.frozen(kw_only=True)
class PiToMeEnergy(StrategyConfig):
    """The parameters of PiToMe's energy, shared by every variant.

    Args:
        margin: m, the cosine similarity above which a pair of tokens counts as redundant, in [-1, 1].
        alpha: α, the ELU's scale for pairs below the margin, > 0.
    """

    supports_padding_mask = True

    margin: float = attrs.field(default=0.5, validator=real_in(-1.0, 1.0, "the energy's cosine-similarity margin"))
    alpha: float = attrs.field(
        default=1.0, validator=real_in(0.0, math.inf, "the energy's ELU scale below the margin", open_low=True)
    )

    def energy(self, metric: Tensor, similarity: Tensor | None = None) -> Tensor:
        """(B', N) PiToMe energy of every token; high = redundant (``similarity``: the metric's, if computed)."""
        return pitome_energy(metric, self.margin, self.alpha, similarity)


@attrs.frozen(kw_only=True)
class PiToMeConfig(PiToMeEnergy):
    """PiToMe v0: merge among the highest-energy tokens, protect the low-energy (informative) ones."""

    name = "pitome"
    max_r = 0.5
    max_r_reason = "the 2 * floor(r * N) highest-energy tokens are paired into sources and destinations"

    def merge_plan(self, metric: Tensor, grid: tuple[int, int], n_merge: int, valid: Tensor | None) -> MergePlan:
        """Pair the 2 * n_merge highest-energy tokens alternately by rank; every source merges."""
        similarity = cosine_similarity(metric.float())  # (B', N, N) once: energy and matching share it
        order = self.energy(metric, similarity).argsort(dim=1, descending=True, stable=True)  # highest first
        src, dst = order[:, 0 : 2 * n_merge : 2], order[:, 1 : 2 * n_merge : 2]  # alternate by energy rank
        protected = order[:, 2 * n_merge :]
        return bipartite_plan(metric, src, dst, n_merge, protected=protected, valid=valid, similarity=similarity)


@attrs.frozen(kw_only=True)
class PiToMeV1Config(PiToMeEnergy, CellStrategyConfig):
    """PiToMe v1: the highest-energy token of each 2x2 cell is a destination; the rest match onto them."""

    name = "pitome_v1"
    uses_similarity = True

    def destination_score(self, metric: Tensor, grid: tuple[int, int], similarity: Tensor | None = None) -> Tensor:
        """(B', N) the energy: each cell's most redundant token is its destination."""
        return self.energy(metric, similarity)


@attrs.frozen(kw_only=True)
class PiToMeV2Config(PiToMeV1Config):
    """PiToMe v2: v1's destinations; the highest-energy other tokens are sources, the rest protected."""

    name = "pitome_v2"

    def source_score(self, metric: Tensor, grid: tuple[int, int], dst_score: Tensor) -> Tensor:
        """(B', N) the energy again: the most redundant non-destinations merge, low-energy ones are protected."""
        return dst_score

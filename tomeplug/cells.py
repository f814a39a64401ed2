"""2x2 cells of a token grid: one destination per cell, the other tokens matched bipartitely onto them.

A building block for strategy authors, beside :mod:`tomeplug.matching`: every strategy that picks its
destinations per cell (grad-ToMe, ToMeSD, PiToMe v1/v2, and any third party's) subclasses
:class:`CellStrategyConfig` or calls :func:`cell_plan`. The (h, w) grid is cut into ceil(h/2) x
ceil(w/2) cells from the top-left corner; at an odd edge the last row or column of cells is partial
(2x1, 1x2 or 1x1) and still holds one destination. All functions work on a batch of token groups at
once, with static shapes (no Python loop over tokens or cells).
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from tomeplug.config import StrategyConfig
from tomeplug.matching import bipartite_plan, cosine_similarity
from tomeplug.plan import MergePlan

# With one destination per cell, N - num_cells(grid) tokens can merge. That is at least floor(N / 2) on
# every grid: for odd h and w, hw - (h + 1)(w + 1) / 4 >= (hw - 1) / 2 since (h - 1)(w - 1) >= 0; with an
# even h, hw - h(w + 1) / 4 >= hw / 2 since w >= 1. A 1xN grid with N odd leaves exactly floor(N / 2), so
# r = 0.5 is the largest bound valid for every grid.
CELL_MAX_R = 0.5
CELL_MAX_R_REASON = (
    "one destination per 2x2 cell: a 1xN grid with N odd leaves only floor(N/2) tokens to merge, "
    "and every grid leaves at least that many"
)


def num_cells(grid: tuple[int, int]) -> int:
    """How many 2x2 cells (partial ones at odd edges included) tile an (h, w) grid."""
    h, w = grid
    return -(-h // 2) * -(-w // 2)


def cell_destinations(score: Tensor, grid: tuple[int, int]) -> Tensor:
    """The highest-scoring token of every 2x2 cell.

    Ties go to the first token in the cell's row-major order (top-left first), so a constant score
    picks the top-left token of each cell.

    Args:
        score: (B', N) per-token score, N = h * w in row-major order.
        grid: (h, w).
    Returns:
        (B', num_cells(grid)) token indices, cells in row-major order.
    """
    b, n = score.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"grid {h}x{w} does not hold the {n} tokens of each group")
    hc, wc = -(-h // 2), -(-w // 2)
    # Pad odd edges with -inf: padding never wins, and the top-left token of every cell is real.
    padded = F.pad(score.reshape(b, h, w), (0, 2 * wc - w, 0, 2 * hc - h), value=float("-inf"))  # (B', 2hc, 2wc)
    per_cell = padded.reshape(b, hc, 2, wc, 2).permute(0, 1, 3, 2, 4).reshape(b, hc, wc, 4)
    offset = per_cell.argmax(dim=-1)  # (B', hc, wc), in [0, 4): row-major position inside the cell
    rows = 2 * torch.arange(hc, device=score.device).view(hc, 1) + offset // 2
    cols = 2 * torch.arange(wc, device=score.device).view(1, wc) + offset % 2
    return (rows * w + cols).reshape(b, hc * wc)


def complement(index: Tensor, n: int) -> Tensor:
    """The tokens of [0, n) not in ``index`` (B', K), ascending: (B', n - K). No host sync."""
    b = index.shape[0]
    taken = torch.zeros(b, n, dtype=torch.int32, device=index.device).scatter_(1, index, 1)
    return taken.argsort(dim=1, stable=True)[:, : n - index.shape[1]]


def cell_plan(
    metric: Tensor,
    grid: tuple[int, int],
    n_merge: int,
    dst_score: Tensor,
    src_score: Tensor | None = None,
    strategy: str = "",
    valid: Tensor | None = None,
    similarity: Tensor | None = None,
) -> MergePlan:
    """Destinations per 2x2 cell, then bipartite matching of the other tokens onto them.

    Args:
        metric: (B', N, C) similarity features.
        grid: (h, w) with h * w == N.
        n_merge: how many tokens to merge away, at most N - num_cells(grid).
        dst_score: (B', N) each cell's highest-scoring token is its destination.
        src_score: (B', N) or None. None: every non-destination token is a source candidate and the
            ``n_merge`` most similar to a destination merge. Given: only the ``n_merge`` highest-scoring
            non-destination tokens are sources (all of them merge) and the others are protected.
        strategy: the strategy's name, for the error message.
        valid: (B', N) bool padding mask passed on to :func:`bipartite_plan`, or None.
        similarity: the metric's (B', N, N) cosine similarities passed on to :func:`bipartite_plan`, or None.
    """
    b, n, _ = metric.shape
    dst = cell_destinations(dst_score, grid)  # (B', cells)
    available = n - dst.shape[1]
    if n_merge > available:
        h, w = grid
        raise ValueError(
            f"strategy {strategy!r} cannot merge {n_merge} of {n} tokens on a {h}x{w} grid: with one "
            f"destination per 2x2 cell ({dst.shape[1]} cells), at most {available} can merge; lower r"
        )
    rest = complement(dst, n)  # (B', N - cells)
    if src_score is None:
        return bipartite_plan(metric, rest, dst, n_merge, valid=valid, similarity=similarity)
    order = src_score.gather(1, rest).argsort(dim=1, descending=True, stable=True)
    ranked = rest.gather(1, order)  # non-destinations, highest score first
    src, protected = ranked[:, :n_merge], ranked[:, n_merge:]
    return bipartite_plan(metric, src, dst, n_merge, protected=protected, valid=valid, similarity=similarity)


@attrs.frozen(kw_only=True)
class CellStrategyConfig(StrategyConfig):
    """Base of the strategies that pick one destination per 2x2 cell by a per-token score.

    A subclass implements :meth:`destination_score` (and :meth:`source_score` to protect tokens). With
    ``uses_similarity`` set, the metric's (B', N, N) cosine similarities are computed once per plan and
    handed to both scores and to the matching.
    """

    max_r = CELL_MAX_R
    max_r_reason = CELL_MAX_R_REASON
    supports_padding_mask = True
    uses_similarity: ClassVar[bool] = False

    def destination_score(self, metric: Tensor, grid: tuple[int, int], similarity: Tensor | None = None) -> Tensor:
        """(B', N) per-token score; the highest of each cell is its destination."""
        raise NotImplementedError(f"{type(self).__name__} does not implement destination_score()")

    def source_score(self, metric: Tensor, grid: tuple[int, int], dst_score: Tensor) -> Tensor | None:
        """(B', N) score of the non-destinations: the floor(r * N) highest are sources, the rest protected.

        ``None`` (the default): every non-destination is a source candidate, the most similar merge.
        """
        return None

    def merge_plan(self, metric: Tensor, grid: tuple[int, int], n_merge: int, valid: Tensor | None) -> MergePlan:
        """Destinations per cell, then the ``n_merge`` chosen sources merge into their best match."""
        similarity = cosine_similarity(metric.float()) if self.uses_similarity else None
        dst_score = self.destination_score(metric, grid, similarity)
        src_score = self.source_score(metric, grid, dst_score)
        return cell_plan(metric, grid, n_merge, dst_score, src_score, self.name, valid, similarity)

"""pool2x2: adaptive 2x2 average pooling of a token grid, undone by unpooling.

The (h, w) grid is cut into 2x2 cells from the top-left corner (at an odd edge the last cells are 2x1,
1x2 or 1x1). Every token may merge only into the top-left token of its own cell, its "anchor". Each
attention call merges exactly floor(r * N) tokens: the non-anchor tokens most similar (cosine of the
metric) to their anchor. A cell of near-identical tokens is therefore pooled whole, into one token at
its top-left position, before any token of a textured cell merges. Unmerging copies each pooled token
back to every token of its cell (nearest unpooling). Pooling every cell (plain 2x2 average pooling)
would be r = 0.75 on an even grid; the cap is 0.5 so that r is honoured exactly on every grid.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from tomeplug import MergePlan, StrategyConfig


def cell_anchors(grid: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """(N,) the row-major index of the top-left token of every token's 2x2 cell."""
    h, w = grid
    rows = torch.arange(h, device=device) // 2 * 2
    cols = torch.arange(w, device=device) // 2 * 2
    return (rows.view(h, 1) * w + cols.view(1, w)).reshape(h * w)


@attrs.frozen(kw_only=True)
class Pool2x2Config(StrategyConfig):
    """Adaptive 2x2 pooling: the tokens most alike their cell's top-left token merge into it."""

    name = "pool2x2"
    # A cell keeps its anchor, so N - ceil(h/2) * ceil(w/2) tokens can merge: at least floor(N/2) on
    # every grid, and exactly that on a 1xN grid with N odd (3/4 only on even grids).
    max_r = 0.5
    max_r_reason = "each 2x2 cell keeps one token: a 1xN grid with N odd can merge only floor(N/2) tokens"

    def merge_plan(self, metric: Tensor, grid: tuple[int, int], n_merge: int, valid: Tensor | None) -> MergePlan:
        """Merge the ``n_merge`` tokens most similar to their cell's anchor into it (r = 0 never gets here)."""
        b, n, _ = metric.shape
        h, w = grid
        if h * w != n:
            raise ValueError(f"grid {h}x{w} does not hold the {n} tokens of each group")
        anchor = cell_anchors(grid, metric.device)  # (N,)
        unit = F.normalize(metric, dim=-1)  # (B', N, C)
        score = (unit * unit[:, anchor]).sum(dim=-1)  # (B', N) cosine similarity to the anchor
        is_anchor = anchor == torch.arange(n, device=metric.device)
        score = score.masked_fill(is_anchor, float("-inf"))  # anchors never merge
        merged = score.argsort(dim=1, descending=True, stable=True)[:, :n_merge]  # (B', n_merge)
        # value 0, not False: torch.jit.trace (the harness's FLOP count) has no scatter_ for a bool Scalar
        keep = torch.ones(b, n, dtype=torch.bool, device=metric.device).scatter_(1, merged, 0)  # (B', N)
        kept = keep.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, : n - n_merge]  # (B', M)
        slot = keep.long().cumsum(dim=1) - 1  # (B', N) slot of every kept token
        assignment = torch.where(keep, slot, slot[:, anchor])  # merged tokens join their anchor's slot
        return MergePlan.from_assignment(assignment, kept)

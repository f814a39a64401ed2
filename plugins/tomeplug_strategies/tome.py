"""ToMe: bipartite soft matching (Bolya et al., 2023)."""

from __future__ import annotations

import attrs
from torch import Tensor

from tomeplug.config import StrategyConfig
from tomeplug.matching import alternate_split, bipartite_plan
from tomeplug.plan import MergePlan


@attrs.frozen(kw_only=True)
class ToMeConfig(StrategyConfig):
    """ToMe bipartite soft matching: even tokens merge into their most similar odd token."""

    name = "tome"
    max_r = 0.5
    max_r_reason = "bipartite matching merges at most half the tokens"
    supports_padding_mask = True

    def merge_plan(self, metric: Tensor, grid: tuple[int, int], n_merge: int, valid: Tensor | None) -> MergePlan:
        """Merge the ``n_merge`` even-position tokens most similar to an odd-position token."""
        src, dst = alternate_split(metric.shape[1], metric.device)
        return bipartite_plan(metric, src, dst, n_merge, valid=valid)

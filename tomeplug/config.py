"""Strategy configs: frozen, validated attrs classes that hold one merge algorithm and compute its plan."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from torch import Tensor

from tomeplug.plan import MergePlan


def _check_r(instance: StrategyConfig, attribute: attrs.Attribute, value: float) -> None:
    cls = type(instance)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"r must be a float, got {value!r}")
    if not 0.0 <= value <= cls.max_r:
        raise ValueError(
            f"r={value} is out of range for strategy {cls.name!r}: r is the merge fraction (the share of "
            f"each attention call's tokens merged away) and must lie in [0, {cls.max_r}]"
            f"{f' ({cls.max_r_reason})' if cls.max_r_reason else ''}."
        )


@attrs.frozen(kw_only=True)
class StrategyConfig:
    """Base class of every strategy's config: the algorithm and its parameters, nothing else.

    A subclass sets the class variables ``name`` (the registered name) and ``max_r``, adds its own
    validated fields, and implements :meth:`merge_plan` (the plan for a given number of merges; r = 0
    never reaches it) or, for full control, :meth:`plan`. How a plan is applied (scope, metric,
    proportional attention, padding) is not the strategy's: see :class:`tomeplug.Setting`.

    Args:
        r: merge fraction, the share of the tokens of each attention call merged away, in [0, max_r].
    """

    name: ClassVar[str] = ""
    max_r: ClassVar[float] = 0.5
    max_r_reason: ClassVar[str] = ""
    supports_padding_mask: ClassVar[bool] = False
    """Whether the plan honours its ``valid`` argument (needed for ``exclude_padding``)."""

    r: float = attrs.field(default=0.5, validator=_check_r)

    def num_to_merge(self, n: int) -> int:
        """How many of n tokens one attention call merges away: floor(r * n)."""
        return int(n * self.r + 1e-6)

    def plan(self, metric: Tensor, grid: tuple[int, int], valid: Tensor | None = None) -> MergePlan:
        """Plan the merge of a batch of token groups: the identity plan when nothing merges, else :meth:`merge_plan`.

        Args:
            metric: (B', N, C) the similarity features of each group's tokens.
            grid: (h, w) with h * w == N, the row-major 2D layout of each group's tokens.
            valid: (B', N) bool, False for padding tokens; given only when ``exclude_padding`` is set.
        """
        b, n, _ = metric.shape
        n_merge = self.num_to_merge(n)
        if n_merge == 0:
            return MergePlan.identity(b, n, metric.device)
        return self.merge_plan(metric, grid, n_merge, valid)

    def merge_plan(self, metric: Tensor, grid: tuple[int, int], n_merge: int, valid: Tensor | None) -> MergePlan:
        """The plan that merges ``n_merge`` >= 1 tokens of each group away (arguments as :meth:`plan`)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither merge_plan() nor plan()")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of this config, with the strategy name."""
        return {"strategy": self.name, **attrs.asdict(self)}

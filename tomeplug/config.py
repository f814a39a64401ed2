"""Strategy configs: frozen, validated attrs classes that also compute the merge plan."""

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
    """Base class of every strategy's config.

    A subclass sets the class variables ``name`` (the registered name) and ``max_r``, adds its own
    validated fields, and implements :meth:`plan`, a pure tensor function of the metric.

    Args:
        r: merge fraction, the share of the tokens of each attention call merged away, in [0, max_r].
        prop_attn: add ``log(size)`` of each merged key to the attention logits (proportional attention).
    """

    name: ClassVar[str] = ""
    max_r: ClassVar[float] = 0.5
    max_r_reason: ClassVar[str] = ""

    r: float = attrs.field(default=0.5, validator=_check_r)
    prop_attn: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def num_to_merge(self, n: int) -> int:
        """How many of n tokens one attention call merges away: floor(r * n)."""
        return int(n * self.r + 1e-6)

    def plan(self, metric: Tensor, grid: tuple[int, int]) -> MergePlan:
        """Plan the merge of a batch of token groups.

        Args:
            metric: (B', N, C') the similarity features of each group's tokens.
            grid: (h, w) with h * w == N, the row-major 2D layout of each group's tokens.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement plan()")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of this config, with the strategy name."""
        return {"strategy": self.name, **attrs.asdict(self)}

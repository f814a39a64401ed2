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


METRICS = ("input", "keys")
SCOPES = ("attn", "block", "span")


def _check_metric(instance: StrategyConfig, attribute: attrs.Attribute, value: str) -> None:
    if value not in METRICS:
        raise ValueError(f"metric={value!r} is not a metric tomeplug computes; choose one of {', '.join(METRICS)}")


def _check_scope(instance: StrategyConfig, attribute: attrs.Attribute, value: str) -> None:
    if value not in SCOPES:
        raise ValueError(f"scope={value!r} is not a merge scope; choose one of {', '.join(SCOPES)}")


def _check_exclude_padding(instance: StrategyConfig, attribute: attrs.Attribute, value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"exclude_padding must be a bool, got {value!r}")
    if value and not type(instance).supports_padding_mask:
        raise ValueError(
            f"strategy {type(instance).name!r} cannot exclude padding (its plan() ignores the padding mask); "
            "use exclude_padding=False or a strategy that supports it"
        )


@attrs.frozen(kw_only=True)
class StrategyConfig:
    """Base class of every strategy's config.

    A subclass sets the class variables ``name`` (the registered name) and ``max_r``, adds its own
    validated fields, and implements :meth:`plan`, a pure tensor function of the metric.

    Args:
        r: merge fraction, the share of the tokens of each attention call merged away, in [0, max_r].
        prop_attn: add ``log(size)`` of each merged key to the attention logits (proportional attention).
            Merging is always size-weighted: a merged token is the mean of the tokens it holds.
        metric: the similarity features: ``"input"`` (the paper's: the attention input averaged over
            head-sized channel chunks) or ``"keys"`` (ToMe's: the attention keys averaged over heads).
        scope: how much of a block runs on merged tokens: ``"attn"`` (qkv and attention, the published
            method), ``"block"`` (attention and MLP, unmerged at the end of the block) or ``"span"`` (kept
            merged across consecutive windowed blocks). Adapters list the scopes they support.
        exclude_padding: keep zero-padding tokens (SAM's padded windows) out of matching: they merge only
            into each other (losslessly, first) and never into real tokens. Needs a strategy with
            ``supports_padding_mask``.
    """

    name: ClassVar[str] = ""
    max_r: ClassVar[float] = 0.5
    max_r_reason: ClassVar[str] = ""
    supports_padding_mask: ClassVar[bool] = False
    """Whether :meth:`plan` honours its ``valid`` argument (needed for ``exclude_padding``)."""

    r: float = attrs.field(default=0.5, validator=_check_r)
    prop_attn: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    metric: str = attrs.field(default="input", validator=_check_metric)
    scope: str = attrs.field(default="attn", validator=_check_scope)
    exclude_padding: bool = attrs.field(default=False, validator=_check_exclude_padding)

    def num_to_merge(self, n: int) -> int:
        """How many of n tokens one attention call merges away: floor(r * n)."""
        return int(n * self.r + 1e-6)

    def plan(self, metric: Tensor, grid: tuple[int, int], valid: Tensor | None = None) -> MergePlan:
        """Plan the merge of a batch of token groups.

        Args:
            metric: (B', N, C') the similarity features of each group's tokens.
            grid: (h, w) with h * w == N, the row-major 2D layout of each group's tokens.
            valid: (B', N) bool, False for padding tokens; given only when ``exclude_padding`` is set.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement plan()")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of this config, with the strategy name."""
        return {"strategy": self.name, **attrs.asdict(self)}

"""A block's setting: its strategy config plus the application options that core and adapters own.

A strategy holds only the algorithm (``r`` and its own parameters, see :class:`tomeplug.StrategyConfig`).
How an adapter applies the strategy's plan is the setting's: which features the plan is computed from
(``metric``), how much of the block runs on merged tokens (``scope``), proportional attention
(``prop_attn``), keeping padding out of matching (``exclude_padding``) and, in SAM 2's memory attention,
merging the memory frames' tokens too (``memory_r``). ``tomeplug.patch`` takes
both kinds as flat keywords and splits them by name (:data:`OPTION_NAMES`).
"""

from __future__ import annotations

from typing import Any

import attrs
from torch import Tensor

from tomeplug.config import StrategyConfig
from tomeplug.plan import MergePlan

METRICS = ("input", "keys")
SCOPES = ("attn", "block", "span")


def _check_metric(instance: Setting, attribute: attrs.Attribute, value: str) -> None:
    if value not in METRICS:
        raise ValueError(f"metric={value!r} is not a metric tomeplug computes; choose one of {', '.join(METRICS)}")


def _check_scope(instance: Setting, attribute: attrs.Attribute, value: str) -> None:
    if value not in SCOPES:
        raise ValueError(f"scope={value!r} is not a merge scope; choose one of {', '.join(SCOPES)}")


def _check_exclude_padding(instance: Setting, attribute: attrs.Attribute, value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"exclude_padding must be a bool, got {value!r}")
    strategy = type(instance.strategy)
    if value and not strategy.supports_padding_mask:
        raise ValueError(
            f"strategy {strategy.name!r} cannot exclude padding (its plan() ignores the padding mask); "
            "use exclude_padding=False or a strategy that supports it"
        )


def _check_memory_r(instance: Setting, attribute: attrs.Attribute, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"memory_r must be a float or None, got {value!r}")
    try:
        attrs.evolve(instance.strategy, r=value)  # the strategy's own range for r (e.g. ToMe's cap at 0.5)
    except ValueError as error:
        raise ValueError(f"memory_r={value} is not a merge fraction this strategy takes: {error}") from None


def _check_strategy(instance: Setting, attribute: attrs.Attribute, value: StrategyConfig) -> None:
    if not isinstance(value, StrategyConfig):
        raise TypeError(f"a setting's strategy must be a tomeplug.StrategyConfig, got {type(value).__name__}")


@attrs.frozen(kw_only=True)
class Setting:
    """How one block merges: the strategy that plans and the options that say how the plan is applied.

    Args:
        strategy: the strategy's config (the algorithm, ``r`` and its own parameters).
        scope: how much of a block runs on merged tokens: ``"attn"`` (qkv and attention, the published
            method), ``"block"`` (attention and MLP, unmerged at the end of the block) or ``"span"`` (kept
            merged across consecutive windowed blocks). Adapters list the scopes they support.
        metric: the similarity features: ``"input"`` (the paper's: the attention input averaged over
            head-sized channel chunks) or ``"keys"`` (ToMe's: the attention keys averaged over heads).
        prop_attn: add ``log(size)`` of each merged key to the attention logits (proportional attention).
            Merging is always size-weighted: a merged token is the mean of the tokens it holds.
        exclude_padding: keep zero-padding tokens (SAM's and Hiera's padded windows) out of matching: they
            merge only into each other and never into real tokens. Needs a strategy whose
            ``supports_padding_mask`` is True.
        memory_r: memory attention only (target ``"memory_attention"``): the merge fraction of each memory
            frame's spatial tokens, the cross-attention's keys and values, planned by the same strategy at
            r = ``memory_r``; they always carry ``log(size)`` (proportional attention). ``None`` (default):
            the memory is not merged. An adapter without a memory refuses it.
    """

    strategy: StrategyConfig = attrs.field(validator=_check_strategy)
    scope: str = attrs.field(default="attn", validator=_check_scope)
    metric: str = attrs.field(default="input", validator=_check_metric)
    prop_attn: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    exclude_padding: bool = attrs.field(default=False, validator=_check_exclude_padding)
    memory_r: float | None = attrs.field(default=None, validator=_check_memory_r)

    @property
    def name(self) -> str:
        """The strategy's registered name."""
        return self.strategy.name

    def num_to_merge(self, n: int) -> int:
        """How many of n tokens one attention call merges away (the strategy's floor(r * n))."""
        return self.strategy.num_to_merge(n)

    def plan(self, metric: Tensor, grid: tuple[int, int], valid: Tensor | None = None) -> MergePlan:
        """The strategy's plan for a batch of token groups (see :meth:`tomeplug.StrategyConfig.plan`)."""
        return self.strategy.plan(metric, grid, valid) if valid is not None else self.strategy.plan(metric, grid)

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-serialisable record: the strategy's name and parameters, then the options."""
        options = attrs.asdict(self, recurse=False, filter=lambda a, _: a.name != "strategy")
        return {**self.strategy.to_dict(), **options}


OPTION_NAMES: tuple[str, ...] = tuple(a.name for a in attrs.fields(Setting) if a.name != "strategy")
"""The application options' names: the flat keywords of ``tomeplug.patch`` that are not a strategy's."""

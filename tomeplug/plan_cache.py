"""Plans reused across calls for token groups seen before, matched by their exact content.

SAM 2's memory attention sees each memory frame in up to ``num_maskmem`` consecutive calls (the bank slides by
one frame per tracked frame). A frame's plan depends only on its planning input, so planning it once, when it
first shows up, and reusing the plan while it stays in the bank plans each memory frame once. A group is reused
only if its planning input equals (``torch.equal``: same shape, dtype, device and values) the one its plan was
made from, so a reused plan is always the plan that planning would make again (strategies plan each group as
if alone: the plugin contract, checked by ``tomeplug.testing.check_strategy``): a cache never changes a result.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from tomeplug.plan import MergePlan


class GroupPlanCache:
    """Plans of token groups by content: each :meth:`plan` call plans only the groups it has not seen.

    It keeps the ``capacity`` most recently used groups (a copy of each and its plan; at least twice the largest
    call's groups, so objects tracked one call each keep their frames); ``version`` (e.g. the versions of the
    weights that the metric projects with) empties it when it changes. Under ``torch.compile`` every group is
    planned (the content check needs host synchronisation, which would break the graph).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.entries: list[tuple[float, Tensor, MergePlan]] = []
        """(fingerprint, group, plan), least recently used first."""
        self.version: Hashable = None
        self.planned = 0
        """How many groups were planned (not reused) so far: for tests and benchmarks."""

    def plan(self, inputs: Tensor, planner: Callable[[Tensor], MergePlan], version: Hashable = None) -> MergePlan:
        """The plan of ``inputs`` (G, N, C): ``planner`` called on the groups not seen before (a (G', N, C)
        batch), the seen groups' plans reused; the same plan as ``planner(inputs)``."""
        if torch.compiler.is_compiling():
            return planner(inputs)
        if version != self.version:
            self.entries, self.version = [], version
        inputs = inputs.detach()  # content only: a kept copy must not hold an autograd graph
        fingerprints = inputs.sum(dim=(1, 2), dtype=torch.float64).tolist()  # one host sync per call
        plans = [self.find(key, group) for key, group in zip(fingerprints, inputs, strict=True)]
        missing = [g for g, found in enumerate(plans) if found is None]
        if missing:
            fresh = planner(inputs[missing])
            self.planned += len(missing)
            for row, g in enumerate(missing):
                plans[g] = row_of(fresh, row)
                self.entries.append((fingerprints[g], inputs[g].clone(), plans[g]))
        if any(p.kept.shape != plans[0].kept.shape for p in plans):  # a strategy whose M varies by content
            self.planned += len(plans) - len(missing)
            return planner(inputs)
        del self.entries[: max(0, len(self.entries) - max(self.capacity, 2 * len(plans)))]
        return MergePlan(*(torch.cat([getattr(p, name) for p in plans]) for name in ("assignment", "kept", "size")))

    def find(self, key: float, group: Tensor) -> MergePlan | None:
        """The cached plan of a group equal to ``group`` (N, C), made the most recently used; or None."""
        for index, (seen_key, seen, plan) in enumerate(self.entries):
            if seen_key == key and seen.shape == group.shape and seen.dtype == group.dtype:
                if seen.device == group.device and torch.equal(seen, group):
                    self.entries.append(self.entries.pop(index))
                    return plan
        return None


def row_of(plan: MergePlan, row: int) -> MergePlan:
    """Group ``row`` of a plan as a one-group plan (views)."""
    return MergePlan(plan.assignment[row : row + 1], plan.kept[row : row + 1], plan.size[row : row + 1])

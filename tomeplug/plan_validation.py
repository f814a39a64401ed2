"""Validating a strategy's plan before it is used: a plugin's bad plan raises, never corrupts an output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from tomeplug.plan import MergePlan, count_slots


class PlanError(ValueError):
    """A strategy returned a merge plan that is not a valid partition of its tokens."""


def validate_plan(plan: object, metric: Tensor, strategy: object) -> MergePlan:
    """Return ``plan`` if it partitions the tokens of ``metric`` (B', N, C); else raise :class:`PlanError`.

    A valid plan has int64 ``assignment`` (B', N) and ``kept`` (B', M) with 1 <= M <= N and a floating
    ``size`` (B', M), all on the metric's device; every token in a slot in [0, M); every slot's kept token
    in [0, N) and assigned to that slot (so no slot is empty); and sizes equal to the number of tokens in
    each slot (so finite and positive). The error names ``strategy`` (its config or name) and the defect.

    Cost: one vectorised check and one host sync per plan. Under ``torch.compile`` the value checks are
    an asynchronous assertion in the graph (no graph break; its message cannot say which check failed);
    under ``torch.jit.trace`` they run untraced, so the traced graph (e.g. a FLOP count) has none of them.
    """
    layout = _layout_defect(plan, metric)
    if layout:
        raise PlanError(_message(strategy, metric, layout))
    if torch.compiler.is_compiling():
        detail = "its values are not a partition of the tokens (run without torch.compile to see which check)"
        torch._assert_async(_is_partition(plan, metric.shape[1]), _message(strategy, metric, detail))
        return plan
    with _untraced():
        if not bool(_is_partition(plan, metric.shape[1])):
            raise PlanError(_message(strategy, metric, "; ".join(_value_defects(plan, metric.shape[1]))))
    return plan


def _message(strategy: object, metric: Tensor, defect: str) -> str:
    name = getattr(strategy, "name", strategy)
    cls = "" if isinstance(strategy, str) else f" ({type(strategy).__module__}.{type(strategy).__qualname__})"
    b, n = metric.shape[:2]
    return (
        f"strategy {name!r}{cls} returned an invalid merge plan for {b} token groups of N={n} tokens: {defect}. "
        "A plan must assign every token to one of M slots, each slot holding its kept token, with sizes counting "
        "each slot's tokens. This is a bug in the strategy: check it with tomeplug.testing.check_strategy, or "
        "use another strategy."
    )


def _layout_defect(plan: object, metric: Tensor) -> str:
    """What is wrong with the plan's types, shapes, dtypes or devices ('' if nothing): no data is read."""
    if not isinstance(plan, MergePlan):
        return f"plan() returned {type(plan).__name__}, not a tomeplug.MergePlan"
    fields = {"assignment": plan.assignment, "kept": plan.kept, "size": plan.size}
    for field, value in fields.items():
        if not isinstance(value, Tensor) or value.dim() != 2:
            return f"{field} must be a 2-D tensor, got {_describe(value)}"
    b, n = metric.shape[:2]
    m = plan.kept.shape[1]
    shapes = {"assignment": (b, n), "kept": (b, m), "size": (b, m)}
    for field, shape in shapes.items():
        if tuple(fields[field].shape) != shape:
            got = tuple(fields[field].shape)
            return f"{field} has shape {got}, expected {shape} (assignment (B', N); kept and size (B', M))"
    if not 1 <= m <= n:
        return f"M={m} slots, expected 1 <= M <= N={n}"
    for field in ("assignment", "kept"):
        if fields[field].dtype != torch.int64:
            return f"{field} has dtype {fields[field].dtype}, expected torch.int64"
    if not plan.size.is_floating_point():
        return f"size has dtype {plan.size.dtype}, expected a floating point dtype"
    for field, value in fields.items():
        if value.device != metric.device:
            return f"{field} is on {value.device}, the tokens on {metric.device}"
    return ""


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _is_partition(plan: MergePlan, n: int) -> Tensor:
    """() bool: the plan's values partition N tokens (the fast check: a few small batched ops)."""
    assignment, kept, size = plan.assignment, plan.kept, plan.size
    m = kept.shape[1]
    slots = torch.arange(m, device=kept.device)
    assigned = (assignment >= 0) & (assignment < m)  # (B', N)
    kept_in_range = (kept >= 0) & (kept < n)  # (B', M)
    own_slot = assignment.gather(1, kept.clamp(0, n - 1)) == slots  # (B', M): implies no empty slot
    counted = size == count_slots(assignment.clamp(0, m - 1), m).to(size.dtype)  # (B', M)
    return assigned.all() & kept_in_range.all() & own_slot.all() & counted.all()


def _value_defects(plan: MergePlan, n: int) -> list[str]:
    """Each failed value check of an invalid plan, with how often and one example (the slow, clear path)."""
    assignment, kept, size = plan.assignment, plan.kept, plan.size
    m = kept.shape[1]
    counts = count_slots(assignment.clamp(0, m - 1), m).to(size.dtype)
    own_slot = assignment.gather(1, kept.clamp(0, n - 1)) == torch.arange(m, device=kept.device)
    finite = size.isfinite()
    checks = [  # (where a check fails, the defect, the field to quote; None: name the slot)
        ((assignment < 0) | (assignment >= m), f"tokens assigned outside the slots [0, {m})", "assignment"),
        ((kept < 0) | (kept >= n), f"kept indices outside the tokens [0, {n})", "kept"),
        (counts == 0, "empty slots (no token assigned)", None),
        (~own_slot, "kept tokens assigned to another slot", "kept"),
        (~finite, "sizes that are NaN or infinite", "size"),
        (finite & (size <= 0), "sizes that are zero or negative", "size"),
        (finite & (size > 0) & (size != counts), "sizes that do not count their slot's tokens", "size"),
    ]
    fields = {"assignment": assignment, "kept": kept, "size": size}
    defects = []
    for bad, what, field in checks:
        if bool(bad.any()):
            group, index = (int(i) for i in bad.nonzero()[0])
            if field is None:
                example = f"slot {index} of group {group}"
            else:
                example = f"{field}[{group}, {index}] = {fields[field][group, index].item()}"
            defects.append(f"{int(bad.sum())} {what} (e.g. {example})")
    return defects or ["its values are not a partition of the tokens"]


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    """Run the body outside any ``torch.jit.trace`` in progress (its ops are not recorded)."""
    if not torch.jit.is_tracing():
        yield
        return
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)

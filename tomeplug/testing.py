"""Conformance checks for plugin authors: call them from your own tests.

``check_strategy(MyConfig)`` and ``check_adapter(MyAdapter(), make_model, make_input)`` raise
``AssertionError`` with a message naming what broke and where; they need no test framework.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from tomeplug.adapter import Adapter
from tomeplug.classswap import is_swapped
from tomeplug.config import StrategyConfig
from tomeplug.patching import SETTING_ATTR, active_patch, patch
from tomeplug.plan import MergePlan
from tomeplug.registry import get_registry

# Grids of real attention calls (SAM's 14x14 windows) and the awkward ones: tiny, odd, one token wide.
DEFAULT_GRIDS: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 3), (4, 4), (1, 7), (5, 7), (14, 14))


def expect(condition: object, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``condition`` holds (unlike ``assert``, never stripped)."""
    if not condition:
        raise AssertionError(message)


def expect_raises(error: type[Exception], call: Callable[[], object], message: str) -> None:
    """Expect ``call()`` to raise ``error``; anything else (including no error) fails with ``message``."""
    try:
        call()
    except error:
        return
    except Exception as exc:  # the wrong error is a failure too
        raise AssertionError(f"{message}: raised {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{message}: nothing was raised")


def check_strategy(
    config_cls: type[StrategyConfig],
    *,
    grids: Sequence[tuple[int, int]] = DEFAULT_GRIDS,
    r_values: Sequence[float] | None = None,
    batch: int = 3,
    channels: int = 8,
    seed: int = 0,
    batch_independent: bool = True,
    **params: Any,
) -> None:
    """Check a strategy's config class against the plan contract; the first breach raises AssertionError.

    Checked: the declaration (a named, frozen, serialisable config; r above ``max_r`` raises), r=0 gives
    the identity plan, and on every grid (odd ones included) and every r: plan shapes and dtypes, exactly
    N - floor(r * N) slots, valid and unique kept indices each inside its own slot, sizes that count the
    assignment and sum to N, ``unmerge(merge(x))`` back to N tokens, a metric left unmodified, the same
    plan for the same input, (``batch_independent``) each group planned as if alone; then, on every grid
    at ``max_r``, that ``plan()`` survives ``torch.jit.trace`` (:func:`check_traceable`).

    Args:
        config_cls: the strategy's :class:`tomeplug.StrategyConfig` subclass.
        grids: (h, w) token grids to plan on.
        r_values: merge fractions to try; default 0.1, 0.25, max_r / 2 and max_r.
        batch, channels, seed: the random metrics' batch of token groups, channels and seed.
        batch_independent: whether a group's plan must not depend on the other groups of the batch.
        **params: the strategy's own parameters, passed to every config.
    """
    check_declaration(config_cls, **params)
    r_values = r_values if r_values is not None else sorted({0.1, 0.25, config_cls.max_r / 2, config_cls.max_r})
    for grid in grids:
        n = grid[0] * grid[1]
        random = torch.randn(batch, n, channels, generator=torch.Generator().manual_seed(seed))
        for kind, metric in (("random", random), ("constant (all ties)", torch.ones(batch, n, channels))):
            for r in [0.0, *r_values]:
                config = config_cls(r=r, **params)
                where = f"{config_cls.__name__}(r={r}) on a {grid[0]}x{grid[1]} grid with a {kind} metric"
                before = metric.clone()
                plan = _plan(config, metric, grid, where)
                expect(torch.equal(metric, before), f"{where}: plan() modified the metric in place")
                check_plan(plan, metric, config.num_to_merge(n), where)
                if r == 0:
                    expect(_same_plan(plan, MergePlan.identity(batch, n)), f"{where}: r=0 must give the identity plan")
                again = _plan(config, metric.clone(), grid, where)
                expect(_same_plan(plan, again), f"{where}: same input, different plan")
                if batch_independent:
                    alone = [_plan(config, metric[i : i + 1], grid, where) for i in range(metric.shape[0])]
                    together = all(_same_plan(_row(plan, i), p) for i, p in enumerate(alone))
                    expect(together, f"{where}: a group's plan depends on the other groups of the batch")
    config = config_cls(r=config_cls.max_r, **params)
    for grid in grids:
        metric = torch.randn(batch, grid[0] * grid[1], channels, generator=torch.Generator().manual_seed(seed))
        check_traceable(config, metric, grid, f"{config_cls.__name__}(r={config.r}) on a {grid[0]}x{grid[1]} grid")


def check_traceable(config: StrategyConfig, metric: Tensor, grid: tuple[int, int], where: str = "plan") -> None:
    """Check that ``config.plan(metric, grid)`` can be traced by ``torch.jit.trace``.

    The harness counts FLOPs with fvcore, which traces the patched model and so every plan() in it.
    """

    def plan_tensors(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        plan = config.plan(m, grid)
        return plan.assignment, plan.kept, plan.size

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings on data-dependent values; trace's deprecation
            torch.jit.trace(plan_tensors, (metric,), check_trace=False)
    except Exception as exc:  # the tracer's errors are RuntimeErrors with multi-line internals
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        raise AssertionError(
            f"{where}: plan() fails under torch.jit.trace ({reason}). The tomeplug harness counts FLOPs by "
            "tracing the patched model (fvcore), so this strategy would crash it. The usual cause is a Python "
            "bool passed as an op's value, e.g. mask.scatter_(1, idx, True) or masked_fill_(m, True): pass an "
            "int (scatter_(1, idx, 1)) or a tensor (torch.ones_like(idx, dtype=torch.bool)) instead."
        ) from exc


def check_declaration(config_cls: type[StrategyConfig], **params: Any) -> None:
    """Check the config class itself: name, ``max_r`` in (0, 1), frozen, serialisable, r range enforced."""
    name = getattr(config_cls, "__name__", repr(config_cls))
    expect(isinstance(config_cls, type) and issubclass(config_cls, StrategyConfig), f"{name}: not a StrategyConfig")
    expect(isinstance(config_cls.name, str) and config_cls.name, f"{name}: set the class variable `name`")
    expect(0 < config_cls.max_r < 1, f"{name}: max_r={config_cls.max_r} must lie in (0, 1)")
    config = config_cls(r=config_cls.max_r, **params)
    expect_raises(attrs.exceptions.FrozenInstanceError, lambda: setattr(config, "r", 0.0), f"{name} must be frozen")
    record = json.loads(json.dumps(config.to_dict()))
    expect(record.pop("strategy") == config_cls.name, f"{name}: to_dict() must name the strategy")
    expect(config_cls(**record) == config, f"{name}: config_cls(**to_dict()) must rebuild the same config")
    for bad in (config_cls.max_r + 1e-3, 1.0, -0.1):
        expect_raises(ValueError, lambda r=bad: config_cls(r=r, **params), f"{name}(r={bad}) must raise ValueError")


def check_plan(plan: MergePlan, metric: Tensor, n_merge: int, where: str = "plan") -> None:
    """Check one plan for ``metric`` (B', N, C) that should merge ``n_merge`` tokens of each group."""
    expect(isinstance(plan, MergePlan), f"{where}: plan() returned {type(plan).__name__}, not a MergePlan")
    b, n, _ = metric.shape
    m = n - n_merge
    for field, shape in (("assignment", (b, n)), ("kept", (b, m)), ("size", (b, m))):
        got = tuple(getattr(plan, field).shape)
        expect(got == shape, f"{where}: {field} has shape {got}, expected {shape} (N={n}, floor(r*N)={n_merge})")
    expect(plan.assignment.dtype == plan.kept.dtype == torch.int64, f"{where}: assignment and kept must be int64")
    expect(plan.size.is_floating_point(), f"{where}: size must be floating point")
    kept, assignment = plan.kept, plan.assignment
    expect(bool(((kept >= 0) & (kept < n)).all()), f"{where}: kept indices outside [0, {n})")
    expect(bool((kept.sort(dim=1).values.diff(dim=1) > 0).all()), f"{where}: kept indices repeat within a group")
    expect(bool(((assignment >= 0) & (assignment < m)).all()), f"{where}: assignment outside [0, {m})")
    own_slot = assignment.gather(1, kept)
    expect(torch.equal(own_slot, torch.arange(m).expand(b, m)), f"{where}: a kept token lies outside its own slot")
    counts = torch.zeros(b, m).scatter_add_(1, assignment, torch.ones(b, n))
    expect(torch.equal(plan.size.float(), counts), f"{where}: size does not count the tokens assigned to each slot")
    expect(bool((plan.size.sum(dim=1) == n).all()), f"{where}: sizes do not sum to N={n}")
    x = torch.randn(b, n, 5, generator=torch.Generator().manual_seed(0))
    merged = plan.merge(x)
    expect(tuple(merged.shape) == (b, m, 5), f"{where}: merge gave shape {tuple(merged.shape)}, expected {(b, m, 5)}")
    restored = plan.unmerge(merged)
    expect(tuple(restored.shape) == (b, n, 5), f"{where}: unmerge(merge(x)) does not have the N={n} tokens of x")
    alone = plan.size.gather(1, assignment) == 1  # (B', N) tokens merged with no other
    expect(torch.equal(restored[alone], x[alone]), f"{where}: unmerge(merge(x)) changed unmerged tokens")


def check_adapter(
    adapter: str | Adapter,
    make_model: Callable[[], nn.Module],
    make_input: Callable[[], Any],
    *,
    run: Callable[[nn.Module, Any], Any] | None = None,
    strategy: str | StrategyConfig = "tome",
    r: float = 0.3,
    **params: Any,
) -> None:
    """Check an adapter on a (tiny) model; the first breach raises AssertionError.

    Checked: it matches the model and lists its blocks; in every merge scope it declares (or the one in
    ``params``), r=0 reproduces the model's output bit for bit, merging every block changes the output
    (same shapes, finite) and unpatching restores it;
    patching the first and last blocks swaps something in each (and nothing elsewhere), attaches the
    block's config, keeps ``state_dict``, changes the output (same shapes, finite) and patching again
    gives the same output; unpatching restores classes and output bit for bit; empty and out-of-range
    schedules raise and leave the model unpatched.

    Args:
        adapter: a registered adapter's name or an adapter instance.
        make_model: builds the model (in eval mode); called once.
        make_input: builds the input; called once.
        run: computes the output from (model, input); default ``model(input)``.
        strategy: the strategy name or config used to merge (a registered name needs the registry).
        r, **params: the merge fraction (> 0, so that the patch merges) and the strategy's parameters.
    """
    if isinstance(adapter, str):
        adapter = get_registry().adapter(adapter)
    model, inputs, run = make_model(), make_input(), run or (lambda model, x: model(x))
    name = f"adapter {adapter.name!r} on {type(model).__name__}"
    expect(adapter.matches(model), f"{name}: matches(model) is False")
    blocks = list(adapter.blocks(model))
    expect(blocks, f"{name}: blocks(model) is empty")
    reference = _run(run, model, inputs)
    classes, state = [type(m) for m in model.modules()], _state(model)
    for scope in [params["scope"]] if "scope" in params else adapter.scopes:
        scoped = {**params, "scope": scope}
        with patch(model, strategy, adapter=adapter, **{**scoped, "r": 0.0}):
            expect(_equal(_run(run, model, inputs), reference), f"{name}: r=0 in scope {scope!r} changed the output")
        with patch(model, strategy, adapter=adapter, **{**scoped, "r": r}):
            merged = _run(run, model, inputs)
        _expect_merged(merged, reference, f"{name}: merging every block in scope {scope!r} with r={r}")
        expect([type(m) for m in model.modules()] == classes, f"{name}: unpatching scope {scope!r} left classes")
        expect(_equal(_run(run, model, inputs), reference), f"{name}: unpatching scope {scope!r} changed the output")
    selected = sorted({0, len(blocks) - 1})
    handle = patch(model, strategy, layers=selected, adapter=adapter, r=r, **params)
    for index, block in enumerate(blocks):
        swapped = [m for m in block.modules() if is_swapped(m)]
        expect(bool(swapped) == (index in selected), f"{name}: block {index} swapped {len(swapped)} modules")
        settings = [getattr(m, SETTING_ATTR, None) for m in swapped]
        expect(index not in selected or handle.schedule[index] in settings, f"{name}: block {index} lacks its setting")
    expect(_equal(_state(model), state), f"{name}: patching changed the state_dict")
    merged = _run(run, model, inputs)
    _expect_merged(merged, reference, f"{name}: patching blocks {selected} with r={r}")
    again = patch(model, strategy, layers=selected, adapter=adapter, r=r, **params)
    expect(_equal(_run(run, model, inputs), merged), f"{name}: patching twice differs from patching once")
    handle.remove()  # replaced by the second patch: a no-op
    replaced = f"{name}: removing a replaced patch's handle unpatched the model"
    expect(active_patch(model, adapter.target) is again, replaced)
    again.remove()
    expect(active_patch(model, adapter.target) is None, f"{name}: the model still has an active patch")
    expect([type(m) for m in model.modules()] == classes, f"{name}: unpatching did not restore every class")
    expect(_equal(_state(model), state), f"{name}: unpatching left the state_dict changed")
    expect(_equal(_run(run, model, inputs), reference), f"{name}: unpatching did not restore the output")
    for layers, error in (([], ValueError), ([len(blocks)], IndexError), ([-1], IndexError)):

        def bad(layers: list[int] = layers) -> object:
            return patch(model, strategy, layers=layers, adapter=adapter, r=r, **params)

        expect_raises(error, bad, f"{name}: the schedule {layers} must raise {error.__name__}")
        expect(not any(is_swapped(m) for m in model.modules()), f"{name}: a rejected schedule left modules patched")


def _expect_merged(merged: list[Tensor], reference: list[Tensor], where: str) -> None:
    """A merged output keeps the reference's shapes, is finite, and differs from it."""
    expect([t.shape for t in merged] == [t.shape for t in reference], f"{where} changed the output shapes")
    expect(all(t.isfinite().all() for t in merged if t.is_floating_point()), f"{where} gave non-finite output")
    expect(not _equal(merged, reference), f"{where} left the output unchanged")


def _plan(config: StrategyConfig, metric: Tensor, grid: tuple[int, int], where: str) -> MergePlan:
    try:
        return config.plan(metric, grid)
    except Exception as exc:  # within its declared max_r, a strategy must plan every grid
        raise AssertionError(f"{where}: plan() raised {type(exc).__name__}: {exc}") from exc


def _same_plan(a: MergePlan, b: MergePlan) -> bool:
    pairs = zip(attrs.astuple(a, recurse=False), attrs.astuple(b, recurse=False), strict=True)
    return all(x.shape == y.shape and torch.equal(x.float(), y.float()) for x, y in pairs)


def _row(plan: MergePlan, i: int) -> MergePlan:
    return MergePlan(*(t[i : i + 1] for t in attrs.astuple(plan, recurse=False)))


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor in a (nested) output of tensors, tuples, lists and dicts."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for key in sorted(obj, key=str) for t in _tensors(obj[key])]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _run(run: Callable[[nn.Module, Any], Any], model: nn.Module, inputs: Any) -> list[Tensor]:
    with torch.no_grad():
        tensors = _tensors(run(model, inputs))
    expect(tensors, "the model's output holds no tensor")
    return tensors


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _equal(a: list[Tensor] | dict[str, Tensor], b: list[Tensor] | dict[str, Tensor]) -> bool:
    """Bit-for-bit equality of two tensor lists or two state dicts (same keys in the same order)."""
    if isinstance(a, dict):
        return list(a) == list(b) and _equal(list(a.values()), list(b.values()))
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))

"""Properties every registered strategy's plans must have, checked with hypothesis on random token groups.

Parametrised over the registry (``strategy_name``), so a strategy added later is covered automatically.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tomeplug.plan import MergePlan

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the registry fixture holds no per-example state
)


def seeded_randn(*shape: int) -> torch.Tensor:
    """Reproducible random features for the explicit examples."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


GRIDS = st.one_of(
    st.tuples(st.integers(1, 7), st.integers(1, 7)),
    st.sampled_from([(3, 5), (7, 7), (1, 9), (9, 1), (1, 2), (5, 14), (14, 14)]),
)


@st.composite
def cases(draw):
    """A batch of token groups on a grid: (metric, grid, r-fraction of max_r, seed)."""
    h, w = draw(GRIDS)
    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    if draw(st.booleans()):
        metric = torch.randn(b, h, w, c, generator=generator)
    else:  # few distinct values: many exact ties in similarities, energies and gradients
        metric = torch.randint(-1, 2, (b, h, w, c), generator=generator).float()
    pad_h, pad_w = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    metric[:, h - pad_h :] = 0  # zero-padded rows and columns, as at the edge of SAM's windows
    metric[:, :, w - pad_w :] = 0
    fraction = draw(st.sampled_from([1.0, 0.5]) | st.floats(0.0, 1.0))
    return metric.reshape(b, h * w, c), (h, w), fraction, seed


def make_config(registry, name: str, fraction: float):
    """The strategy's default config at r = fraction * max_r."""
    cls = registry.strategy(name)
    return cls(r=fraction * cls.max_r)


def check_plan(plan: MergePlan, b: int, n: int, m: int) -> None:
    """Shapes, dtypes, a valid partition of the N tokens into M slots, and sizes that count it."""
    assert plan.assignment.shape == (b, n) and plan.assignment.dtype == torch.long
    assert plan.kept.shape == (b, m) and plan.kept.dtype == torch.long
    assert plan.size.shape == (b, m) and plan.size.is_floating_point()
    assert ((plan.kept >= 0) & (plan.kept < n)).all()
    assert (plan.kept.sort(dim=1).values.diff(dim=1) > 0).all(), "kept indices repeat"
    assert ((plan.assignment >= 0) & (plan.assignment < m)).all()
    assert torch.equal(plan.assignment.gather(1, plan.kept), torch.arange(m).expand(b, m)), "kept not in own slot"
    counts = torch.zeros(b, m).scatter_add_(1, plan.assignment, torch.ones(b, n))
    assert torch.equal(plan.size, counts)
    assert (plan.size >= 1).all() and (plan.size.sum(dim=1) == n).all()


@SETTINGS
@given(case=cases())
@example(case=(seeded_randn(2, 15, 4), (3, 5), 1.0, 0))
@example(case=(seeded_randn(1, 49, 3), (7, 7), 1.0, 0))
@example(case=(seeded_randn(2, 11, 3), (1, 11), 1.0, 0))
@example(case=(torch.zeros(2, 25, 4), (5, 5), 1.0, 0))
def test_plan_is_a_valid_partition(registry, strategy_name, case):
    metric, grid, fraction, _ = case
    b, n, _ = metric.shape
    config = make_config(registry, strategy_name, fraction)
    plan = config.plan(metric, grid)
    check_plan(plan, b, n, n - math.floor(config.r * n + 1e-6))


@SETTINGS
@given(case=cases(), channels=st.integers(1, 5))
def test_merge_and_unmerge(registry, strategy_name, case, channels):
    metric, grid, fraction, seed = case
    b, n, _ = metric.shape
    plan = make_config(registry, strategy_name, fraction).plan(metric, grid)
    m = plan.num_merged
    generator = torch.Generator().manual_seed(seed)

    x = torch.randn(b, n, channels, generator=generator)
    merged = plan.merge(x)
    assert merged.shape == (b, m, channels) and plan.unmerge(merged).shape == (b, n, channels)
    assert torch.isfinite(merged).all()
    # merging conserves the size-weighted total: nothing is lost
    torch.testing.assert_close((merged * plan.size.unsqueeze(-1)).sum(dim=1), x.sum(dim=1), rtol=1e-5, atol=1e-4)

    # by definition, as dense matrices: membership[g, s, i] = 1 where token i of group g is in slot s
    membership = (plan.assignment.unsqueeze(1) == torch.arange(m).view(1, m, 1)).double()  # (B, M, N)
    mean = membership @ x.double() / membership.sum(-1, keepdim=True)  # every slot's mean token
    torch.testing.assert_close(merged.double(), mean, rtol=1e-5, atol=1e-5)
    y = torch.randn(b, m, channels, generator=generator)
    torch.testing.assert_close(plan.unmerge(y).double(), membership.transpose(1, 2) @ y.double(), rtol=0, atol=0)

    # constant within every slot (small integers: sums and means are exact): merging gives the constants back
    per_slot = torch.randint(-8, 9, (b, m, channels), generator=generator).float()
    assert torch.equal(plan.merge(plan.unmerge(per_slot)), per_slot)

    constant = torch.full((b, n, channels), 0.3)
    torch.testing.assert_close(plan.unmerge(plan.merge(constant)), constant, rtol=0, atol=1e-6)


@SETTINGS
@given(case=cases())
def test_same_input_same_plan(registry, strategy_name, case):
    metric, grid, fraction, _ = case
    config = make_config(registry, strategy_name, fraction)
    first, second = config.plan(metric, grid), config.plan(metric.clone(), grid)
    for field in ("assignment", "kept", "size"):
        assert torch.equal(getattr(first, field), getattr(second, field))


@SETTINGS
@given(case=cases())
def test_r0_is_the_identity(registry, strategy_name, case):
    metric, grid, _, _ = case
    b, n, _ = metric.shape
    plan = registry.strategy(strategy_name)(r=0.0).plan(metric, grid)
    identity = MergePlan.identity(b, n)
    for field in ("assignment", "kept", "size"):
        assert torch.equal(getattr(plan, field), getattr(identity, field))


def test_r_above_max_raises(registry, strategy_name):
    cls = registry.strategy(strategy_name)
    assert 0 < cls.max_r < 1 and cls.max_r_reason
    cls(r=cls.max_r)
    for r in (cls.max_r + 0.01, 1.0, -0.1):
        with pytest.raises(ValueError, match="out of range"):
            cls(r=r)


def test_max_r_holds_on_every_small_grid(registry, strategy_name):
    """max_r is honest: the largest r is plannable on every grid up to 9x9, padded or not."""
    config = registry.strategy(strategy_name)(r=registry.strategy(strategy_name).max_r)
    generator = torch.Generator().manual_seed(0)
    for h in range(1, 10):
        for w in range(1, 10):
            n = h * w
            metric = torch.randn(2, n, 3, generator=generator)
            metric[1, n // 2 :] = 0
            check_plan(config.plan(metric, (h, w)), 2, n, n - config.num_to_merge(n))

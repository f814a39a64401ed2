"""tomeplug.testing: the built-ins and the example plugin pass the conformance checks; broken ones fail."""

from __future__ import annotations

import importlib
from pathlib import Path

import attrs
import pytest
import torch

from tomeplug.plan import MergePlan
from tomeplug.testing import check_plan, check_strategy
from tomeplug_strategies.tome import ToMeConfig

EXAMPLE = Path(__file__).parents[1] / "examples" / "tomeplug-example-strategy"


def test_builtin_strategy_conforms(registry, strategy_name):
    check_strategy(registry.strategy(strategy_name))


def test_example_plugin_tests_pass(monkeypatch):
    """The example's own tests (its conformance check among them), run against its source."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(EXAMPLE / "tests"))
    module = importlib.import_module("test_pool2x2")
    tests = [test for name, test in vars(module).items() if name.startswith("test_")]
    assert module.test_conforms in tests
    for test in tests:
        test()


@attrs.frozen(kw_only=True)
class DuplicateKeptConfig(ToMeConfig):
    """Broken: names one token as the representative of two slots."""

    name = "duplicate_kept"

    def plan(self, metric, grid):
        plan = super().plan(metric, grid)
        kept = plan.kept.clone()
        kept[:, -1] = kept[:, 0]
        return MergePlan(plan.assignment, kept, plan.size)


@attrs.frozen(kw_only=True)
class NondeterministicConfig(ToMeConfig):
    """Broken: merges into a destination drawn from the global random generator."""

    name = "nondeterministic"

    def plan(self, metric, grid):
        return super().plan(metric + torch.randn_like(metric), grid)


@attrs.frozen(kw_only=True)
class TooFewConfig(ToMeConfig):
    """Broken: merges one token fewer than r asks for."""

    name = "too_few"

    def plan(self, metric, grid):
        b, n, _ = metric.shape
        return ToMeConfig(r=max(self.num_to_merge(n) - 1, 0) / n).plan(metric, grid)


@attrs.frozen(kw_only=True)
class InPlaceConfig(ToMeConfig):
    """Broken: normalises the metric in place, so the adapter's tokens change under it."""

    name = "in_place"

    def plan(self, metric, grid):
        return super().plan(metric.div_(metric.norm(dim=-1, keepdim=True)), grid)


@attrs.frozen(kw_only=True)
class UncappedConfig(ToMeConfig):
    """Broken: claims r up to 0.9 but bipartite matching cannot merge more than half."""

    name = "uncapped"
    max_r = 0.9


@pytest.mark.parametrize(
    ("config_cls", "message"),
    [
        (DuplicateKeptConfig, "kept indices repeat"),
        (NondeterministicConfig, "same input, different plan"),
        (TooFewConfig, "expected"),
        (InPlaceConfig, "modified the metric in place"),
        (UncappedConfig, r"plan\(\) raised ValueError: cannot merge"),
    ],
)
def test_broken_strategy_fails(config_cls, message):
    with pytest.raises(AssertionError, match=message):
        check_strategy(config_cls)


@attrs.frozen(kw_only=True)
class NamelessConfig(ToMeConfig):
    """Broken: registers under no name."""

    name = ""


def test_nameless_config_fails():
    with pytest.raises(AssertionError, match="set the class variable `name`"):
        check_strategy(NamelessConfig)


def test_check_plan_catches_wrong_sizes():
    metric = torch.randn(2, 16, 4)
    plan = ToMeConfig(r=0.25).plan(metric, (4, 4))
    check_plan(plan, metric, 4)
    with pytest.raises(AssertionError, match="size does not count"):
        check_plan(MergePlan(plan.assignment, plan.kept, torch.ones_like(plan.size)), metric, 4)

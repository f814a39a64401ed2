"""Plugins cannot corrupt results or shadow built-ins.

- A strategy's invalid plan raises, naming the strategy and the defect, before the model gives any output
  (eager, under ``torch.jit.trace`` as the FLOP count runs it, and under ``torch.compile``).
- The harness never records a normal row from non-finite encoder outputs.
- A plugin registering a name that exists keeps its other entries; both are reachable by qualified names,
  ``list`` shows the conflict and the bare name raises naming both origins.
- ``check_strategy`` catches a plan that ``torch.jit.trace`` (the harness's FLOP count) cannot trace.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import warnings

import attrs
import pytest
import torch
from fake_plugins import FakeDist, FakeEntryPoint, install
from harness_helpers import run as run_harness
from harness_helpers import run_video as run_video_harness
from tiny_models import tiny_sam_encoder

import tomeplug
import tomeplug.metric
from tomeplug.__main__ import format_listing
from tomeplug.plan import MergePlan
from tomeplug.plan_validation import PlanError
from tomeplug.registry import NameConflictError, Origin, Registry
from tomeplug.testing import check_strategy, check_traceable
from tomeplug_adapters.sam_vit import SamViTAdapter
from tomeplug_eval.results import ResultsFile
from tomeplug_eval.tasks import NonFiniteOutputError
from tomeplug_strategies.pitome import PiToMeConfig
from tomeplug_strategies.tome import ToMeConfig


def _with(plan: MergePlan, **changes: torch.Tensor) -> MergePlan:
    fields = {"assignment": plan.assignment, "kept": plan.kept, "size": plan.size, **changes}
    return MergePlan(**fields)


def _set(t: torch.Tensor, column: int, value: float) -> torch.Tensor:
    t = t.clone()
    t[:, column] = value
    return t


def _empty_last_slot(plan: MergePlan) -> MergePlan:
    m = plan.num_merged
    assignment = plan.assignment.masked_fill(plan.assignment == m - 1, 0)
    return MergePlan.from_assignment(assignment, plan.kept)  # sizes counted: 0 for the empty slot


# defect -> (how a valid ToMe plan is broken, what the error must say)
DEFECTS = {
    "empty_slot": (_empty_last_slot, r"empty slots \(no token assigned\)"),
    "zero_size": (lambda p: _with(p, size=_set(p.size, 0, 0.0)), "sizes that are zero or negative"),
    "negative_size": (lambda p: _with(p, size=_set(p.size, 0, -1.0)), "sizes that are zero or negative"),
    "nan_size": (lambda p: _with(p, size=_set(p.size, 0, float("nan"))), "sizes that are NaN or infinite"),
    "inf_size": (lambda p: _with(p, size=_set(p.size, 0, float("inf"))), "sizes that are NaN or infinite"),
    "uncounted_size": (lambda p: _with(p, size=torch.ones_like(p.size)), "sizes that do not count their slot"),
    "kept_out_of_range": (
        lambda p: _with(p, kept=_set(p.kept, 0, p.num_tokens)),
        r"kept indices outside the tokens \[0, 25\) \(e.g. kept\[0, 0\] = 25\)",
    ),
    "kept_in_other_slot": (lambda p: _with(p, kept=p.kept.flip(1)), "kept tokens assigned to another slot"),
    "assignment_too_large": (
        lambda p: _with(p, assignment=_set(p.assignment, 0, p.num_merged)),
        r"tokens assigned outside the slots \[0, 13\)",
    ),
    "assignment_negative": (
        lambda p: _with(p, assignment=_set(p.assignment, 3, -1)),
        r"tokens assigned outside the slots .*assignment\[0, 3\] = -1",
    ),
    "kept_wrong_shape": (
        lambda p: _with(p, kept=p.kept[:, :-1]),
        r"size has shape \(\d+, 13\), expected \(\d+, 12\)",
    ),
    "assignment_wrong_shape": (
        lambda p: _with(p, assignment=p.assignment[:, 1:]),
        r"assignment has shape \(\d+, 24\), expected \(\d+, 25\)",
    ),
    "too_many_slots": (
        lambda p: MergePlan(p.assignment, torch.cat([p.kept, p.kept], 1), torch.cat([p.size, p.size], 1)),
        "M=26 slots, expected 1 <= M <= N=25",
    ),
    "int32_assignment": (lambda p: _with(p, assignment=p.assignment.int()), "assignment has dtype torch.int32"),
    "integer_size": (lambda p: _with(p, size=p.size.long()), "size has dtype torch.int64, expected a floating"),
    "wrong_device": (lambda p: _with(p, size=p.size.to("meta")), "size is on meta, the tokens on cpu"),
    "not_a_plan": (lambda p: (p.assignment, p.kept, p.size), "plan\\(\\) returned tuple, not a tomeplug.MergePlan"),
}


@attrs.frozen(kw_only=True)
class BrokenPlanConfig(ToMeConfig):
    """ToMe, with its plan then broken as ``defect`` (a key of DEFECTS) says."""

    name = "broken_plan"
    defect: str = "nan_size"

    def plan(self, metric, grid, valid=None):
        return DEFECTS[self.defect][0](super().plan(metric, grid, valid))


@attrs.frozen(kw_only=True)
class BoolScatterConfig(ToMeConfig):
    """ToMe plus a mask built by ``scatter_(1, idx, True)``: valid eager, untraceable by torch.jit.trace."""

    name = "bool_scatter"

    def plan(self, metric, grid, valid=None):
        plan = super().plan(metric, grid, valid)
        is_kept = torch.zeros(plan.assignment.shape, dtype=torch.bool)
        is_kept.scatter_(1, plan.kept, True)  # a bool Scalar value: the tracer has no schema for it
        return plan


def plugin(name: str, *strategies: type, adapters: tuple = ()) -> types.ModuleType:
    """A plugin module registering ``strategies`` and ``adapters``."""
    module = types.ModuleType(name)

    @tomeplug.hookimpl
    def tomeplug_register_strategies(register):
        for config in strategies:
            register(config)

    @tomeplug.hookimpl
    def tomeplug_register_adapters(register):
        for adapter in adapters:
            register(adapter)

    module.tomeplug_register_strategies = tomeplug_register_strategies
    module.tomeplug_register_adapters = tomeplug_register_adapters
    return module


@pytest.fixture
def broken(registry):
    registry.register_plugin(plugin("broken_plugin", BrokenPlanConfig, BoolScatterConfig))
    return registry


# --- invalid plans -------------------------------------------------------------------------------------


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_invalid_plan_raises_naming_strategy_and_defect_before_any_output(broken, defect):
    encoder = tiny_sam_encoder()  # block 0: 5x5 windows (N=25), ToMe at r=0.5 keeps M=13 slots
    tomeplug.patch(encoder, "broken_plan", layers=[0], r=0.5, defect=defect)
    returned: list[str] = []
    for module in (encoder.blocks[0].attn, encoder.blocks[0], encoder):
        module.register_forward_hook(lambda module, args, output: returned.append(type(module).__name__))
    with pytest.raises(PlanError) as caught, torch.no_grad():
        encoder(torch.randn(1, 3, 256, 256))
    message = str(caught.value)
    assert "strategy 'broken_plan' (test_plugin_safety.BrokenPlanConfig)" in message
    assert "tomeplug.testing.check_strategy" in message
    assert re.search(DEFECTS[defect][1], message), message
    assert returned == []  # neither the merged attention, nor its block, nor the encoder returned


def test_invalid_plan_raises_in_every_scope_and_with_padding_excluded(broken):
    for params in ({"scope": "block"}, {"scope": "span"}, {"exclude_padding": True}):
        encoder = tiny_sam_encoder()
        tomeplug.patch(encoder, "broken_plan", r=0.5, defect="nan_size", **params)
        with pytest.raises(PlanError, match="'broken_plan'.*sizes that are NaN or infinite"), torch.no_grad():
            encoder(torch.randn(1, 3, 256, 256))


def test_valid_plans_pass_and_the_check_leaves_the_output_bit_for_bit(strategy_name, monkeypatch):
    encoder = tiny_sam_encoder()
    x = torch.randn(1, 3, 256, 256)
    padding = tomeplug.get_registry().strategy(strategy_name).supports_padding_mask
    tomeplug.patch(encoder, strategy_name, r=0.25, exclude_padding=padding)
    with torch.no_grad():
        checked = encoder(x)
        monkeypatch.setattr(tomeplug.metric, "validate_plan", lambda plan, metric, strategy: plan)
        assert torch.equal(encoder(x), checked)


def test_invalid_plan_raises_under_jit_trace_and_the_trace_records_no_check(broken, monkeypatch):
    """fvcore's FLOP count traces the patched encoder: a bad plan fails there clearly, a good one costs no op."""

    def traced_ops(encoder):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(encoder, torch.randn(1, 3, 256, 256), check_trace=False).inlined_graph
        return sorted(node.kind() for node in graph.nodes())

    encoder = tiny_sam_encoder()
    tomeplug.patch(encoder, "broken_plan", layers=[0], r=0.5, defect="assignment_too_large")
    with pytest.raises(PlanError, match="'broken_plan'.*tokens assigned outside the slots"):
        traced_ops(encoder)
    tomeplug.patch(encoder, "tome", r=0.5)
    checked = traced_ops(encoder)
    monkeypatch.setattr(tomeplug.metric, "validate_plan", lambda plan, metric, strategy: plan)
    assert checked == traced_ops(encoder)


def test_invalid_plan_raises_under_fullgraph_compile(broken):
    torch._dynamo.reset()
    try:
        encoder = tiny_sam_encoder()
        tomeplug.patch(encoder, "broken_plan", layers=[0], r=0.5, defect="nan_size")
        compiled = torch.compile(encoder, fullgraph=True, backend="aot_eager", dynamic=False)
        with pytest.raises(RuntimeError, match="strategy 'broken_plan'.*run without torch.compile"):
            with torch.no_grad():
                compiled(torch.randn(1, 3, 256, 256))
    finally:
        torch._dynamo.reset()


# --- the harness ---------------------------------------------------------------------------------------


def test_nan_sizes_through_the_harness_raise_and_record_no_row(broken, tmp_path):
    with pytest.raises(PlanError, match="strategy 'broken_plan'.*NaN"):
        run_harness(tmp_path, "strategy=plugin", "strategy.name=broken_plan", "+strategy.defect=nan_size")
    assert ResultsFile(tmp_path).records() == []


def test_non_finite_encoder_output_stops_the_harness(broken, tmp_path, monkeypatch):
    """With the plan check out of the way, the NaN embeddings themselves stop the run (no miou=0 row)."""
    monkeypatch.setattr(tomeplug.metric, "validate_plan", lambda plan, metric, strategy: plan)
    args = ("strategy=plugin", "strategy.name=broken_plan", "+strategy.defect=nan_size", "flops=false")
    with pytest.raises(NonFiniteOutputError, match="image encoder's output for .* NaN or infinite.*patched model"):
        run_harness(tmp_path, *args)
    assert ResultsFile(tmp_path).records() == []


def test_non_finite_encoder_output_stops_the_video_harness(broken, tmp_path, monkeypatch):
    monkeypatch.setattr(tomeplug.metric, "validate_plan", lambda plan, metric, strategy: plan)
    args = ("strategy=plugin", "strategy.name=broken_plan", "+strategy.defect=nan_size", "flops=false")
    with pytest.raises(NonFiniteOutputError, match="image encoder's output holds NaN or infinite"):
        run_video_harness(tmp_path, *args, "dataset.count=1")
    assert ResultsFile(tmp_path).records() == []


# --- name conflicts ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CopycatToMeConfig(PiToMeConfig):
    """A third party's "tome" (PiToMe's algorithm, so its output differs from the built-in's)."""

    name = "tome"


@attrs.frozen(kw_only=True)
class CopycatExtraConfig(ToMeConfig):
    name = "copycat_extra"


COPYCAT_PATCHED: list[int] = []


class CopycatSamAdapter(SamViTAdapter):
    """A third party's adapter under the built-in's name (matching the same models); notes what it patches."""

    def patch_block(self, model, index, schedule):
        COPYCAT_PATCHED.append(index)
        super().patch_block(model, index, schedule)


def register_copycat(registry: Registry) -> None:
    origin = Origin("copycat", "copycat-dist", "1.0")
    with pytest.warns(RuntimeWarning, match="strategy name 'tome' is registered by plugin 'builtin_strategies'"):
        registry.register_plugin(plugin("copycat", CopycatToMeConfig, CopycatExtraConfig), "copycat", origin)


def test_conflicting_strategy_keeps_the_plugin_and_the_builtin(registry):
    register_copycat(registry)
    assert registry.failures == []
    strategies = registry.strategies
    assert strategies["copycat_extra"].obj is CopycatExtraConfig  # the rest of the plugin is kept
    assert strategies["builtin_strategies:tome"].obj is ToMeConfig
    assert strategies["copycat:tome"].obj is CopycatToMeConfig
    assert "tome" not in strategies and strategies["pitome"].obj is PiToMeConfig  # only that name is affected
    assert registry.strategy("builtin_strategies:tome") is ToMeConfig
    assert registry.strategy("copycat:tome") is CopycatToMeConfig
    assert registry.strategy("builtin_strategies:pitome") is PiToMeConfig  # qualified names always work
    assert "builtin_strategies:tome" in tomeplug.list_strategies()


def test_ambiguous_strategy_name_errors_with_both_origins_and_choosing_works(registry):
    register_copycat(registry)
    encoder, x = tiny_sam_encoder(), torch.randn(1, 3, 256, 256)
    with pytest.raises(NameConflictError) as caught:
        tomeplug.patch(encoder, "tome", r=0.5)
    message = str(caught.value)
    assert (
        "plugin 'builtin_strategies' from tomeplug 0" in message and "plugin 'copycat' from copycat-dist 1.0" in message
    )
    assert "'builtin_strategies:tome' or 'copycat:tome'" in message and "pip uninstall copycat-dist" in message
    assert tomeplug.active_patch(encoder) is None
    with torch.no_grad():
        outputs = {}
        for name in ("builtin_strategies:tome", "copycat:tome"):
            with tomeplug.patch(encoder, name, r=0.5):
                outputs[name] = encoder(x)
        with tomeplug.patch(encoder, ToMeConfig(r=0.5)):
            builtin = encoder(x)
        with tomeplug.patch(encoder, CopycatToMeConfig(r=0.5)):
            copycat = encoder(x)
    assert torch.equal(outputs["builtin_strategies:tome"], builtin)
    assert torch.equal(outputs["copycat:tome"], copycat) and not torch.equal(builtin, copycat)


def test_listing_shows_the_conflict(registry):
    register_copycat(registry)
    listing = format_listing(registry)
    strategies, conflicts = listing.split("name conflicts")
    assert "builtin_strategies:tome" in strategies and "copycat:tome" in strategies and "copycat_extra" in strategies
    assert "registered by plugin 'copycat' from copycat-dist 1.0" in strategies
    assert "the strategy name 'tome' is registered by plugin 'builtin_strategies'" in conflicts
    assert "'builtin_strategies:tome' or 'copycat:tome'" in conflicts


def test_conflicting_adapter_keeps_both_and_errors_when_ambiguous(registry):
    origin = Origin("copycat", "copycat-dist", "1.0")
    with pytest.warns(RuntimeWarning, match="adapter name 'sam_vit'"):
        registry.register_plugin(
            plugin("copycat", CopycatExtraConfig, adapters=(CopycatSamAdapter(),)), "copycat", origin
        )
    encoder = tiny_sam_encoder()
    assert registry.strategy("copycat_extra") is CopycatExtraConfig
    for call in (lambda: tomeplug.patch(encoder, "tome"), lambda: tomeplug.patch(encoder, "tome", adapter="sam_vit")):
        with pytest.raises(
            NameConflictError, match="adapter name 'sam_vit'.*'builtin_adapters:sam_vit' or 'copycat:sam_vit'"
        ):
            call()
    COPYCAT_PATCHED.clear()
    tomeplug.patch(encoder, "tome", adapter="builtin_adapters:sam_vit")
    assert tomeplug.active_patch(encoder) is not None and COPYCAT_PATCHED == []
    tomeplug.patch(encoder, "tome", adapter="copycat:sam_vit")
    assert len(COPYCAT_PATCHED) == len(encoder.blocks)
    assert isinstance(registry.adapter("copycat:sam_vit"), CopycatSamAdapter)


def test_conflicting_entry_point_keeps_its_other_strategies(fake_entry_points):
    import tomeplug_strategies

    fake_entry_points += [
        FakeEntryPoint("builtin_strategies", tomeplug_strategies, FakeDist("tomeplug", "0.1.0")),
        FakeEntryPoint(
            "copycat", plugin("copycat", CopycatToMeConfig, CopycatExtraConfig), FakeDist("copycat-dist", "1.0")
        ),
    ]
    registry = Registry(autoload=True)
    with pytest.warns(RuntimeWarning, match="'tome' is registered by plugin 'builtin_strategies' from tomeplug 0.1.0"):
        strategies = registry.strategies
    assert registry.failures == []
    assert {"copycat_extra", "builtin_strategies:tome", "copycat:tome", "pitome"} <= set(strategies)
    with pytest.raises(NameConflictError, match="uninstall one of them \\(pip uninstall copycat-dist\\)"):
        registry.strategy("tome")


COPYCAT = """
import attrs
import tomeplug
from tomeplug_strategies.pitome import PiToMeConfig

@attrs.frozen(kw_only=True)
class CopycatToMe(PiToMeConfig):
    name = "tome"

@attrs.frozen(kw_only=True)
class CopycatExtra(PiToMeConfig):
    name = "copycat_extra"

@tomeplug.hookimpl
def tomeplug_register_strategies(register):
    register(CopycatToMe)
    register(CopycatExtra)
"""


def test_installed_conflict_end_to_end(tmp_path):
    install(tmp_path, "copycat_plugin", "copycat-dist", "1.0", COPYCAT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD", None)
    code = (
        "import tomeplug\n"
        "from tomeplug.__main__ import main\n"
        "main(['list'])\n"
        "print(tomeplug.get_registry().strategy('copycat_plugin:tome').__name__)\n"
        "tomeplug.get_registry().strategy('tome')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert "copycat_extra" in done.stdout and "builtin_strategies:tome" in done.stdout
    assert "copycat_plugin:tome" in done.stdout and "name conflicts" in done.stdout
    assert "failed plugins" not in done.stdout
    assert done.stdout.strip().endswith("CopycatToMe")
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("tomeplug.registry.NameConflictError: the strategy name 'tome' is registered by plugin")
    assert (
        "plugin 'builtin_strategies' from tomeplug" in error
        and "plugin 'copycat_plugin' from copycat-dist 1.0" in error
    )


def test_harness_takes_a_qualified_strategy_name(registry, tmp_path):
    register_copycat(registry)
    record = run_harness(tmp_path, "strategy=plugin", "strategy.name=builtin_strategies:tome", "flops=false")
    assert record["strategy"] == "builtin_strategies:tome"
    with pytest.raises(NameConflictError, match="'builtin_strategies:tome' or 'copycat:tome'"):
        run_harness(tmp_path, "strategy=tome", "flops=false")


# --- the conformance kit -------------------------------------------------------------------------------


def test_check_strategy_catches_an_untraceable_plan():
    with pytest.raises(AssertionError) as caught:
        check_strategy(BoolScatterConfig, grids=[(4, 4)])
    message = str(caught.value)
    assert "BoolScatterConfig(r=0.5) on a 4x4 grid: plan() fails under torch.jit.trace" in message
    assert "aten::scatter_" in message and "scatter_(1, idx, 1)" in message and "FLOPs" in message


def test_builtin_plans_trace(registry, strategy_name):
    config = registry.strategy(strategy_name)(r=registry.strategy(strategy_name).max_r)
    for grid in [(1, 7), (5, 5), (14, 14)]:
        metric = torch.randn(3, grid[0] * grid[1], 8, generator=torch.Generator().manual_seed(0))
        check_traceable(config, metric, grid, strategy_name)

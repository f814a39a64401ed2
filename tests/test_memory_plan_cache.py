"""Each SAM 2 memory frame planned once while it stays in the memory bank (option ``memory_r``).

The plans are kept by :class:`tomeplug.plan_cache.GroupPlanCache` and matched by exact content; tracking a
2-object video with and without the cache gives the same masks bit for bit, and the cache plans exactly the
distinct memory frames the memory attention saw (counted independently, from the memory it was handed). A
frame's plan ignores its positional encoding, whose temporal part changes as the frame ages.
"""

from __future__ import annotations

import pytest
import test_memory_attention as memory_tests
import torch
from test_memory_attention import LAYERS, track
from tiny_models import tiny_sam2

import tomeplug
from tomeplug import MergePlan
from tomeplug.plan_cache import GroupPlanCache
from tomeplug_adapters.sam2_memory_keys import merge_memory

N = 64  # the tiny model's frame: 8 x 8 tokens

base_predictor, predictor, video = memory_tests.base_predictor, memory_tests.predictor, memory_tests.video


def distinct(groups: list[torch.Tensor]) -> int:
    """How many different tensors ``groups`` holds (by torch.equal)."""
    seen: list[torch.Tensor] = []
    for group in groups:
        if not any(torch.equal(group, other) for other in seen):
            seen.append(group)
    return len(seen)


@pytest.mark.parametrize("scope", ["block", "span"])
def test_tracking_plans_each_memory_frame_once_with_the_masks_of_planning_every_call(predictor, video, scope):
    frames = []  # every memory frame's spatial tokens the memory attention was handed, per object and call

    def record(module, args, kwargs):
        memory, pointers = kwargs["memory"], kwargs["num_obj_ptr_tokens"]
        spatial = memory[: memory.shape[0] - pointers]  # (F * N, B, C): seq-first, as SAM2Base hands it over
        frames.extend(spatial.reshape(-1, N, *spatial.shape[1:]).transpose(1, 2).flatten(0, 1))

    with tomeplug.patch(predictor, "tome", r=0.25, memory_r=0.5, scope=scope, target="memory_attention"):
        cache = predictor.memory_attention.tomeplug_memory_plans
        hook = predictor.memory_attention.register_forward_pre_hook(record, with_kwargs=True)
        cached = track(predictor, video)
        hook.remove()
        planned = cache.planned
        uncached = GroupPlanCache.plan
        try:  # the same tracking with every frame planned in every call
            GroupPlanCache.plan = lambda self, inputs, planner, version=None: planner(inputs)
            replanned = track(predictor, video)
        finally:
            GroupPlanCache.plan = uncached
    assert len(frames) == 20 and planned == distinct(frames) < 10  # each distinct memory frame once, not 20 times
    assert all(torch.equal(cached[f], replanned[f]) for f in replanned)


def test_a_memory_frame_plan_ignores_its_positional_encoding():
    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention
    tomeplug.patch(memory_attention, "tome", r=0.0, memory_r=0.5)
    layer = memory_attention.layers[0]
    generator = torch.Generator().manual_seed(0)
    memory, pos = torch.randn(2, 1, 2 * N + 4, 16, generator=generator)
    aged = pos.clone()
    aged[:, N : 2 * N] += torch.randn(16, generator=generator)  # the second frame one step older: a new tpos vector
    with torch.no_grad():
        young, old = (merge_memory(layer, memory, p, 4, (8, 8)) for p in (pos, aged))
    assert torch.equal(young.cells, old.cells) and torch.equal(young.log_size, old.log_size)
    assert torch.equal(young.memory, old.memory)


def halves(inputs: torch.Tensor) -> MergePlan:
    """A planner: each group's tokens 2i and 2i + 1 merged, kept at the larger first channel (content-dependent)."""
    g, n, _ = inputs.shape
    pairs = inputs[:, :, 0].reshape(g, n // 2, 2)
    kept = (torch.arange(0, n, 2) + pairs.argmax(-1)).long()
    assignment = torch.arange(n).div(2, rounding_mode="floor").expand(g, n).contiguous()
    return MergePlan.from_assignment(assignment, kept)


def same_plan(a: MergePlan, b: MergePlan) -> bool:
    return all(torch.equal(getattr(a, name), getattr(b, name)) for name in ("assignment", "kept", "size"))


def test_the_cache_reuses_plans_by_exact_content_only():
    cache = GroupPlanCache(capacity=4)
    frames = torch.randn(6, 8, 3, generator=torch.Generator().manual_seed(0))
    calls = [frames[0:3], frames[1:4], frames[2:5], frames[[4, 2, 3]]]
    counts = []
    for inputs in calls:
        assert same_plan(cache.plan(inputs, halves), halves(inputs))
        counts.append(cache.planned)
    assert counts == [3, 4, 5, 5]  # one new group per sliding call; a reordered call plans nothing
    changed = frames[2:5].clone()
    changed[1, 0, 0] += 1e-6  # same shape, nearly the same values: planned anew, never a stale plan
    assert same_plan(cache.plan(changed, halves), halves(changed)) and cache.planned == 6
    cache.plan(frames[2:5], halves, version="new weights")  # a new version empties the cache
    assert cache.planned == 9


def test_the_cache_keeps_the_most_recently_used_groups():
    cache = GroupPlanCache(capacity=2)
    frames = torch.randn(4, 8, 3, generator=torch.Generator().manual_seed(1))
    for index in range(4):  # one group per call: with capacity 2, frame 0 has left after frames 1-3 came
        cache.plan(frames[index : index + 1], halves)
    cache.plan(frames[3:4], halves)
    assert cache.planned == 4 and len(cache.entries) == 2
    cache.plan(frames[0:1], halves)
    assert cache.planned == 5


def test_the_cache_is_bypassed_under_compile():
    cache = GroupPlanCache()
    inputs = torch.randn(3, 8, 3, generator=torch.Generator().manual_seed(2))

    def planned(x):
        return cache.plan(x, halves).kept

    compiled = torch.compile(planned, fullgraph=True, backend="eager")
    assert torch.equal(compiled(inputs), halves(inputs).kept) and cache.entries == []


def test_kept_groups_hold_no_autograd_graph():
    cache = GroupPlanCache()
    inputs = torch.randn(2, 8, 3, requires_grad=True) * 2  # a non-leaf, as memory features in training
    plan = cache.plan(inputs, halves)
    assert same_plan(plan, halves(inputs.detach()))
    assert all(not group.requires_grad and group.grad_fn is None for _, group, _ in cache.entries)

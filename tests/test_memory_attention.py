"""Merging in SAM 2's memory attention (target ``memory_attention``) through a tiny official SAM2VideoPredictor.

The video runs end to end (``init_state``, a first-frame mask prompt, ``propagate_in_video``) and the
predictor's mask logits of every frame and object are compared: r = 0 is bit for bit upstream, unpatching
restores it, merging changes it; a plan that merges nothing but permutes the tokens (every slot's kept
token elsewhere) runs the whole merged path and must equal upstream up to rounding, which holds only if
each merged token is rotated at its kept cell and unmerged to the right tokens.
"""

from __future__ import annotations

import copy
import pickle
from typing import ClassVar

import attrs
import numpy as np
import pytest
import torch
from tiny_models import run_memory_attention, tiny_sam, tiny_sam2

import tomeplug
from tomeplug import MergePlan, StrategyConfig
from tomeplug_eval.video import synthetic_video

VIDEO = "sam2.sam2_video_predictor.SAM2VideoPredictor"
SCOPES = ["attn", "block", "span"]
LAYERS = 2  # the tiny model's memory-attention depth (official: 4)


@attrs.frozen
class PermuteConfig(StrategyConfig):
    """A test strategy: merges nothing (M = N) but reverses the slots, so slot i's kept token is N - 1 - i."""

    name: ClassVar[str] = "permute"

    def plan(self, metric, grid, valid=None):
        b, n, _ = metric.shape
        kept = torch.arange(n - 1, -1, -1).expand(b, n)
        return MergePlan(assignment=kept.clone(), kept=kept.clone(), size=torch.ones(b, n))


@pytest.fixture(scope="module")
def base_predictor():
    return tiny_sam2(target=VIDEO, memory_layers=LAYERS)


@pytest.fixture
def predictor(base_predictor):
    return copy.deepcopy(base_predictor)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 5-frame synthetic video with 2 objects on its first frame."""
    dataset = synthetic_video(count=1, frames=5, size=(48, 64), seed=3, cache_dir=tmp_path_factory.mktemp("cache"))
    item = dataset[0]
    assert len(item.object_ids) >= 2
    return item


def track(predictor, item, calls: list | None = None) -> dict[int, torch.Tensor]:
    """Every frame's mask logits (objects, H, W) for two objects prompted by their first-frame masks;
    ``calls`` collects (layer, frame tokens) of every memory-attention layer's self-attention."""
    layers = predictor.memory_attention.layers
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(lambda m, a, out, i=i: calls.append((i, a[0].shape[1])))
        for i, layer in enumerate(layers)
        if calls is not None
    ]
    try:
        with torch.inference_mode():
            state = predictor.init_state(str(item.frame_dir))
            for obj in item.object_ids[:2]:
                predictor.add_new_mask(state, frame_idx=0, obj_id=obj, mask=item.masks[0][obj])
            logits = {frame: out.clone() for frame, _, out in predictor.propagate_in_video(state)}
    finally:
        for hook in hooks:
            hook.remove()
    assert len(logits) == item.num_frames and logits[0].shape[0] == 2
    return logits


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[f], b[f]) for f in a)


@pytest.fixture(scope="module")
def reference(base_predictor, video):
    return track(copy.deepcopy(base_predictor), video)


@pytest.mark.parametrize("scope", SCOPES)
def test_r0_is_exact_merging_changes_and_unpatch_restores(predictor, video, reference, scope):
    with tomeplug.patch(predictor, "tome", r=0.0, scope=scope, target="memory_attention") as handle:
        assert handle.adapter == "sam2_memory_attention" and handle.target == "memory_attention"
        assert same(track(predictor, video), reference)
    calls = []
    with tomeplug.patch(predictor, "tome", r=0.5, scope=scope, target="memory_attention"):
        merged = track(predictor, video, calls)
    # frames 1..4 for each of the 2 objects through both layers, on 32 of the 8x8 frame's 64 tokens
    assert sorted(set(calls)) == [(0, 32), (1, 32)] and len(calls) == 4 * 2 * LAYERS
    assert torch.equal(merged[0], reference[0])  # the prompted frame runs no memory attention
    assert all(merged[f].isfinite().all() and not torch.equal(merged[f], reference[f]) for f in range(1, 5))
    assert same(track(predictor, video), reference)


def test_scopes_run_the_mlp_merged_or_not_and_give_different_outputs(predictor, video):
    outputs, mlp_tokens = {}, {}
    for scope in SCOPES:
        seen = mlp_tokens[scope] = []
        hook = predictor.memory_attention.layers[1].linear1.register_forward_hook(
            lambda m, a, out, seen=seen: seen.append(a[0].shape[1])
        )
        with tomeplug.patch(predictor, "pitome", r=0.5, scope=scope, target="memory_attention"):
            outputs[scope] = track(predictor, video)
            if scope == "span":  # one plan for the whole stack, run by the memory attention's loop
                assert predictor.memory_attention.tomeplug_runs == ((0, 1),)
                assert type(predictor.memory_attention).__name__ == "MergingMemoryAttention_MemoryAttention"
        hook.remove()
    assert {scope: set(seen) for scope, seen in mlp_tokens.items()} == {"attn": {64}, "block": {32}, "span": {32}}
    assert type(predictor.memory_attention).__name__ == "MemoryAttention"
    for one, other in (("attn", "block"), ("block", "span"), ("attn", "span")):
        assert not torch.equal(outputs[one][2], outputs[other][2]), (one, other)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("prop_attn", [False, True])
def test_a_permuting_plan_runs_the_merged_path_and_equals_upstream(predictor, video, reference, scope, prop_attn):
    """Every token its own slot, slots reversed: RoPE must follow the kept cells; log(1) = 0 changes nothing."""
    calls = []
    with tomeplug.patch(predictor, PermuteConfig(r=0.25), scope=scope, prop_attn=prop_attn, target="memory_attention"):
        permuted = track(predictor, video, calls)
    assert sorted(set(calls)) == [(0, 64), (1, 64)]
    for frame in reference:
        torch.testing.assert_close(permuted[frame], reference[frame], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scope", SCOPES)
def test_a_permuting_plan_equals_upstream_and_wrong_rotations_would_not(scope, monkeypatch):
    """On the memory attention's own output (the masks above damp it): the permuting plan matches upstream to
    rounding; rotating slot i at cell i instead of its kept cell (the check's teeth) is off by far more."""
    from tomeplug_adapters import sam2_memory_attention as module

    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention
    curr = torch.randn(64, 2, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = run_memory_attention(memory_attention, curr)
        with tomeplug.patch(memory_attention, PermuteConfig(r=0.25), scope=scope):
            torch.testing.assert_close(run_memory_attention(memory_attention, curr), expected, atol=1e-5, rtol=1e-5)
            real = module.kept_rotations
            monkeypatch.setattr(module, "kept_rotations", lambda table, kept: real(table, kept.flip(-1)))
            wrong = run_memory_attention(memory_attention, curr)
    assert (wrong - expected).abs().max() > 1e-2


def test_encoder_and_memory_attention_patched_at_once(predictor, video, reference):
    encoder = tomeplug.patch(predictor, "tome", r=0.5, scope="span")
    memory = tomeplug.patch(predictor, "tome", r=0.5, scope="span", target="memory_attention")
    assert tomeplug.active_patch(predictor) is encoder and encoder.target == "encoder"
    assert tomeplug.active_patch(predictor, target="memory_attention") is memory
    assert tomeplug.active_patch(predictor.memory_attention, target="memory_attention") is memory
    assert tomeplug.active_patch(predictor.image_encoder, target="memory_attention") is None
    assert repr(memory) == (
        "<PatchHandle active: sam2_memory_attention on SAM2VideoPredictor, tome in memory_attention blocks [0, 1]>"
    )
    assert memory.to_dict()["target"] == "memory_attention" and encoder.to_dict()["target"] == "encoder"
    both = track(predictor, video)
    tomeplug.patch(predictor, "tome", r=0.5, scope="span", target="memory_attention")  # replaces only its own
    assert not memory.active and tomeplug.active_patch(predictor) is encoder
    assert same(track(predictor, video), both)
    tomeplug.unpatch(predictor, target="encoder")
    assert tomeplug.active_patch(predictor) is None and tomeplug.active_patch(predictor, "memory_attention")
    memory_only = track(predictor, video)
    assert not same(memory_only, both) and not same(memory_only, reference)
    tomeplug.patch(predictor, "tome", r=0.5, scope="span")
    assert tomeplug.unpatch(predictor)  # every target
    assert tomeplug.active_patch(predictor) is None and tomeplug.active_patch(predictor, "memory_attention") is None
    assert same(track(predictor, video), reference)
    assert not [n for m in predictor.modules() for n in vars(m) if n.startswith("tomeplug_")]


def test_patching_the_memory_attention_module_replaces_the_whole_models_memory_patch(predictor):
    outer = tomeplug.patch(predictor, "tome", layers=[0], r=0.5, target="memory_attention")
    encoder = tomeplug.patch(predictor, "tome", r=0.5)
    inner = tomeplug.patch(predictor.memory_attention, "tome", layers=[1], r=0.5)  # its adapter's target
    assert not outer.active and inner.active and encoder.active
    assert type(predictor.memory_attention.layers[0]).__name__ == "MemoryAttentionLayer"
    assert tomeplug.active_patch(predictor, "memory_attention") is inner


def test_batched_objects_plan_per_object():
    """B = 2 frames' tokens in one call: each object's rows equal its own call's (one plan per batch row)."""
    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention
    curr = torch.randn(64, 2, 32, generator=torch.Generator().manual_seed(0))
    tomeplug.patch(memory_attention, "tome", r=0.5, scope="span")
    with torch.no_grad():
        both = run_memory_attention(memory_attention, curr)
        generator = torch.Generator().manual_seed(1)
        memory, memory_pos = torch.randn(2, 2 * 64 + 4, 2, 16, generator=generator)
        curr_pos = torch.randn(64, 2, 32, generator=generator)
        for b in range(2):
            one = memory_attention(
                [curr[:, b : b + 1]], memory[:, b : b + 1], [curr_pos[:, b : b + 1]], memory_pos[:, b : b + 1], 4
            )
            torch.testing.assert_close(one, both[:, b : b + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scope", SCOPES)
def test_fullgraph_compile_matches_eager(scope):
    torch._dynamo.reset()
    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention.double()
    tomeplug.patch(memory_attention, "tome", r=0.5, scope=scope, prop_attn=True)
    curr = torch.randn(64, 1, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def call(module, x):
        generator = torch.Generator().manual_seed(1)
        memory, memory_pos = torch.randn(2, 2 * 64 + 4, 1, 16, generator=generator, dtype=torch.float64)
        curr_pos = torch.randn(64, 1, 32, generator=generator, dtype=torch.float64)
        return module([x], memory, [curr_pos], memory_pos, 4)

    with torch.no_grad():
        expected = call(memory_attention, curr)
        compiled = torch.compile(memory_attention, fullgraph=True, backend="aot_eager", dynamic=False)
        torch.testing.assert_close(call(compiled, curr), expected, atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


def test_nonsense_targets_raise_clearly(predictor):
    with pytest.raises(ValueError, match="unknown target 'memory'.*encoder, memory_attention"):
        tomeplug.patch(predictor, "tome", r=0.5, target="memory")
    with pytest.raises(ValueError, match="adapter 'sam2_hiera' patches the target 'encoder', not 'memory_attention'"):
        tomeplug.patch(predictor, "tome", r=0.5, target="memory_attention", adapter="sam2_hiera")
    with pytest.raises(ValueError, match="scope='window' is not a merge scope"):
        tomeplug.patch(predictor, "tome", r=0.5, scope="window", target="memory_attention")
    with pytest.raises(TypeError, match="no memory_attention adapter supports segment_anything.*sam2_memory_attention"):
        tomeplug.patch(tiny_sam(), "tome", r=0.5, scope="block", target="memory_attention")
    with pytest.raises(IndexError, match="block 2 is out of range"):
        tomeplug.patch(predictor, "tome", layers=[2], r=0.5, scope="block", target="memory_attention")
    with pytest.raises(ValueError, match="unknown target"):
        tomeplug.unpatch(predictor, target="decoder")
    assert tomeplug.active_patch(predictor) is None and tomeplug.active_patch(predictor, "memory_attention") is None
    assert not np.any([type(m).__name__.startswith("Merging") for m in predictor.modules()])


def test_the_registry_lists_targets(registry, predictor):
    from tomeplug.__main__ import format_listing

    assert registry.targets == ["encoder", "memory_attention"]
    assert registry.targets_of(predictor) == ["encoder", "memory_attention"]
    assert registry.targets_of(predictor.memory_attention) == ["memory_attention"]
    assert registry.adapter_for(predictor).name == "sam2_hiera"  # the default target: the image encoder
    assert registry.adapter_for(predictor, "memory_attention").name == "sam2_memory_attention"
    assert "[target memory_attention]" in format_listing(registry)


def test_a_model_patched_at_both_targets_pickles_with_its_patches(predictor, video, reference):
    tomeplug.patch(predictor, "tome", r=0.5, scope="span")
    tomeplug.patch(predictor, "tome", r=0.5, scope="span", target="memory_attention")
    expected = track(predictor, video)
    restored = pickle.loads(pickle.dumps(predictor))
    assert same(track(restored, video), expected)
    assert tomeplug.active_patch(restored, "memory_attention").model is restored
    assert tomeplug.unpatch(restored, target="memory_attention") and tomeplug.active_patch(restored).model is restored
    assert tomeplug.unpatch(restored) and same(track(restored, video), reference)


@pytest.mark.parametrize("scope", SCOPES)
def test_ultralytics_memory_attention_merges_as_sam2s_with_the_same_weights(registry, scope):
    """Ultralytics' vendored MemoryAttention (adapter ultralytics_sam2_memory_attention) and sam2's, built at
    the official SAM 2.1 size with one state dict: the same output dense and merged."""
    from tiny_ultralytics import tiny_sam2 as tiny_ultralytics_sam2

    from tomeplug_eval.architectures import instantiate_sam2, sam2_config

    ultralytics = tiny_ultralytics_sam2().memory_attention
    sam2 = instantiate_sam2(sam2_config("sam2.1/sam2.1_hiera_t.yaml").memory_attention).eval()
    sam2.load_state_dict(ultralytics.state_dict())
    assert registry.targets_of(ultralytics) == registry.targets_of(sam2) == ["memory_attention"]
    assert not registry.adapter("sam2_memory_attention").matches(ultralytics)
    assert not registry.adapter("ultralytics_sam2_memory_attention").matches(sam2)
    curr = torch.randn(64, 2, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = run_memory_attention(sam2, curr)
        torch.testing.assert_close(run_memory_attention(ultralytics, curr), dense)
        with tomeplug.patch(ultralytics, "tome", r=0.5, scope=scope) as handle:
            assert handle.adapter == "ultralytics_sam2_memory_attention"
            merged = run_memory_attention(ultralytics, curr)
        with tomeplug.patch(sam2, "tome", r=0.5, scope=scope):
            torch.testing.assert_close(run_memory_attention(sam2, curr), merged)
    assert not torch.allclose(merged, dense, atol=1e-3)

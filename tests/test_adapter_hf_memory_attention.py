"""Merging in transformers' memory attention (adapters hf_sam2_memory_attention, hf_sam3_tracker_memory_attention).

On the memory attention alone (2 layers, 2 objects in one call) for both families: r = 0 and memory_r = 0 are
bit for bit upstream, unpatching restores it, merging changes it, the scopes run the MLP on the tokens they
say, memory_r shortens the memory, each object gets its own plan, fullgraph compile matches eager. An
independent reference: sam2's research ``MemoryAttention`` holding the same weights, patched with
sam2_memory_attention, gives the same output dense and merged. End to end: Sam2VideoProcessor +
Sam2VideoModel and Sam3TrackerVideoProcessor + Sam3TrackerVideoModel inference sessions on a synthetic video.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from tiny_hf_memory import run_hf_memory_attention, tiny_hf_video

import tomeplug

SCOPES = ("attn", "block", "span")
FAMILIES = {  # family -> (adapter, frame tokens (N, B, C) of the tiny memory attention)
    "sam2": ("hf_sam2_memory_attention", (64, 2, 128)),
    "sam3": ("hf_sam3_tracker_memory_attention", (100, 2, 256)),
}


@pytest.fixture(scope="module")
def base_models():
    return {family: tiny_hf_video(family) for family in FAMILIES}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture
def memory_attention(base_models, family):
    return copy.deepcopy(base_models[family].memory_attention)


def frame_tokens(family: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*FAMILIES[family][1], generator=torch.Generator().manual_seed(0), dtype=dtype)


def run(memory_attention, family):
    with torch.no_grad():
        return run_hf_memory_attention(memory_attention, frame_tokens(family))


def no_trace_left(module) -> bool:
    return not any(
        type(m).__name__.startswith(("Merging", "HFRoPE")) or any(n.startswith("tomeplug_") for n in vars(m))
        for m in module.modules()
    )


@pytest.mark.parametrize("scope", SCOPES)
def test_r0_is_exact_merging_changes_and_unpatch_restores(memory_attention, family, scope):
    adapter = FAMILIES[family][0]
    dense = run(memory_attention, family)
    assert dense.shape == (1, 2, FAMILIES[family][1][0], FAMILIES[family][1][2])  # upstream's (1, B, N, C)
    with tomeplug.patch(memory_attention, "tome", r=0.0, memory_r=0.0, scope=scope) as handle:
        assert handle.adapter == adapter and handle.target == "memory_attention"
        assert torch.equal(run(memory_attention, family), dense)
    for options in ({"r": 0.5}, {"r": 0.0, "memory_r": 0.5}, {"r": 0.5, "memory_r": 0.5, "prop_attn": True}):
        with tomeplug.patch(memory_attention, "tome", scope=scope, **options):
            merged = run(memory_attention, family)
        assert merged.shape == dense.shape and merged.isfinite().all(), options
        assert not torch.allclose(merged, dense, atol=1e-3), options
    assert torch.equal(run(memory_attention, family), dense) and no_trace_left(memory_attention)


def test_scopes_run_the_mlp_merged_or_not_and_give_different_outputs(memory_attention, family):
    n = FAMILIES[family][1][0]
    outputs, mlp_tokens = {}, {}
    for scope in SCOPES:
        seen = mlp_tokens[scope] = set()
        hook = memory_attention.layers[1].linear1.register_forward_hook(lambda m, a, o, seen=seen: seen.add(a[0].shape))
        with tomeplug.patch(memory_attention, "pitome", r=0.5, scope=scope):
            outputs[scope] = run(memory_attention, family)
            if scope == "span":  # one plan for both layers, run by the memory attention's loop
                assert memory_attention.tomeplug_runs == ((0, 1),)
                assert type(memory_attention).__name__.startswith("MergingHFMemoryAttention_")
        hook.remove()
    assert {scope: {s[-2] for s in seen} for scope, seen in mlp_tokens.items()} == {
        "attn": {n},
        "block": {n // 2},
        "span": {n // 2},
    }
    for one, other in (("attn", "block"), ("block", "span"), ("attn", "span")):
        assert not torch.allclose(outputs[one], outputs[other], atol=1e-4), (one, other)


@pytest.mark.parametrize("scope", SCOPES)
def test_memory_r_merges_each_memory_frame_keeping_the_pointers(memory_attention, family, scope):
    """2 memory frames of N tokens and 4 pointers: the cross-attention's keys are half of each frame's and the
    pointers."""
    n = FAMILIES[family][1][0]
    keys = []
    hook = memory_attention.layers[0].cross_attn_image.k_proj.register_forward_hook(
        lambda m, a, o: keys.append(a[0].shape[-2])
    )
    run(memory_attention, family)
    with tomeplug.patch(memory_attention, "tome", r=0.25, memory_r=0.5, scope=scope):
        run(memory_attention, family)
    hook.remove()
    assert keys == [2 * n + 4, 2 * (n // 2) + 4]


def test_a_span_loop_runs_unpatched_layers_as_upstream(memory_attention, family):
    """layers=[1] with memory_r: the swapped loop calls layer 0 (unpatched) as transformers' loop does."""
    dense = run(memory_attention, family)
    with tomeplug.patch(memory_attention, "tome", layers=[1], r=0.0, memory_r=0.0, scope="span"):
        assert type(memory_attention).__name__.startswith("MergingHFMemoryAttention_")
        assert torch.equal(run(memory_attention, family), dense)
    calls = []
    hook = memory_attention.layers[0].linear1.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[-2]))
    with tomeplug.patch(memory_attention, "tome", layers=[1], r=0.5, memory_r=0.5, scope="span"):
        merged = run(memory_attention, family)
    hook.remove()
    assert calls == [FAMILIES[family][1][0]] and not torch.allclose(merged, dense, atol=1e-3)


def test_a_patched_video_model_pickles_with_its_patch(base_models, family):
    model = copy.deepcopy(base_models[family])
    tomeplug.patch(model, "tome", r=0.5, memory_r=0.5, scope="span", target="memory_attention")
    expected = run(model.memory_attention, family)
    restored = pickle.loads(pickle.dumps(model))
    assert restored.memory_attention.layers[0].tomeplug_memory_attention[0] is restored.memory_attention
    assert torch.equal(run(restored.memory_attention, family), expected)
    assert tomeplug.unpatch(restored, target="memory_attention") and no_trace_left(restored.memory_attention)


def test_batched_objects_plan_per_object(memory_attention, family):
    """B = 2 objects in one call: each object's rows equal its own call's (one plan per batch row)."""
    tomeplug.patch(memory_attention, "tome", r=0.5, memory_r=0.5, scope="span")
    curr = frame_tokens(family)
    n, _, c = curr.shape
    width = memory_attention.layers[0].cross_attn_image.k_proj.in_features
    generator = torch.Generator().manual_seed(1)
    memory, memory_pos = torch.randn(2, 2 * n + 4, 2, width, generator=generator)
    curr_pos = torch.randn(n, 2, c, generator=generator)
    with torch.no_grad():
        both = memory_attention(curr, memory, curr_pos, memory_pos, 4)
        for b in range(2):
            rows = slice(b, b + 1)
            one = memory_attention(curr[:, rows], memory[:, rows], curr_pos[:, rows], memory_pos[:, rows], 4)
            torch.testing.assert_close(one, both[:, rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scope", SCOPES)
def test_fullgraph_compile_matches_eager(base_models, scope):
    torch._dynamo.reset()
    memory_attention = copy.deepcopy(base_models["sam2"].memory_attention).double()
    tomeplug.patch(memory_attention, "tome", r=0.5, memory_r=0.5, scope=scope, prop_attn=True)
    curr = frame_tokens("sam2", torch.float64)
    with torch.no_grad():
        expected = run_hf_memory_attention(memory_attention, curr)
        compiled = torch.compile(memory_attention, fullgraph=True, backend="aot_eager", dynamic=False)
        torch.testing.assert_close(run_hf_memory_attention(compiled, curr), expected, atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


def research_twin(hf_memory_attention: torch.nn.Module) -> torch.nn.Module:
    """sam2's ``MemoryAttention`` built as transformers' tiny SAM 2 config says (width 128, 1 head, MLP 64, relu, RoPE
    over 8x8 cells, memory 64 wide, the query position at the input only), holding the same weights."""
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.sam.transformer import RoPEAttention

    config = hf_memory_attention.config
    width, grid = config.memory_attention_hidden_size, config.memory_attention_rope_feat_sizes

    def attention(**kwargs):
        heads = config.memory_attention_num_attention_heads
        return RoPEAttention(embedding_dim=width, num_heads=heads, downsample_rate=1, feat_sizes=grid, **kwargs)

    layer = MemoryAttentionLayer(
        activation=config.memory_attention_feed_forward_hidden_act,
        cross_attention=attention(rope_k_repeat=True, kv_in_dim=64),
        d_model=width,
        dim_feedforward=config.memory_attention_feed_forward_hidden_size,
        dropout=0.0,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=attention(),
    )
    research = MemoryAttention(width, True, layer, config.memory_attention_num_layers).eval()
    weights = {  # transformers' names -> sam2's: o_proj -> out_proj, layer_norm{1,2,3,} -> norm{1,2,3,}
        name.replace("o_proj", "out_proj").replace("layer_norm", "norm"): value
        for name, value in hf_memory_attention.state_dict().items()
    }
    research.load_state_dict(weights)  # strict: every name mapped
    return research


def run_research(memory_attention, curr: torch.Tensor) -> torch.Tensor:
    """sam2's MemoryAttention on the same inputs as :func:`run_hf_memory_attention`, as upstream's (1, B, N, C)."""
    n, b, c = curr.shape
    generator = torch.Generator().manual_seed(1)
    memory, memory_pos = torch.randn(2, 2 * n + 4, b, 64, generator=generator)
    curr_pos = torch.randn(n, b, c, generator=generator)
    with torch.no_grad():
        return memory_attention([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=4).transpose(0, 1)[None]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("options", [{"r": 0.5}, {"r": 0.5, "memory_r": 0.5, "prop_attn": True}, {"memory_r": 0.5}])
def test_same_weights_in_sam2s_memory_attention_merge_the_same(base_models, scope, options):
    hf = copy.deepcopy(base_models["sam2"].memory_attention)
    research = research_twin(hf)
    curr = frame_tokens("sam2")
    dense = run(hf, "sam2")
    torch.testing.assert_close(run_research(research, curr), dense, atol=1e-5, rtol=1e-5)
    options = {"r": 0.0, **options}
    with tomeplug.patch(hf, "tome", scope=scope, **options), tomeplug.patch(research, "tome", scope=scope, **options):
        merged = run(hf, "sam2")
        torch.testing.assert_close(run_research(research, curr), merged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged, dense, atol=1e-3)


def test_matches_the_models_holding_one_and_nothing_else(registry, base_models):
    for family, (adapter, _) in FAMILIES.items():
        model = base_models[family]
        assert registry.adapter_for(model, "memory_attention").name == adapter
        assert registry.adapter_for(model.memory_attention, "memory_attention").name == adapter
    sam2, sam3 = (registry.adapter(FAMILIES[f][0]) for f in ("sam2", "sam3"))
    assert not sam2.matches(base_models["sam3"]) and not sam3.matches(base_models["sam2"])
    assert not registry.adapter("sam2_memory_attention").matches(base_models["sam2"])
    assert registry.adapter_for(base_models["sam2"]).name == "hf_sam2_hiera"  # the default target: the encoder


def test_a_sam3_video_models_tracker_is_matched():
    from tiny_hf_sam3 import tiny_hf_sam3_video

    model = tiny_hf_sam3_video()
    with tomeplug.patch(model, "tome", r=0.5, target="memory_attention") as handle:
        assert handle.adapter == "hf_sam3_tracker_memory_attention"
        assert type(model.tracker_model.memory_attention.layers[0]).__name__.startswith("MergingHF")


def test_unsupported_inputs_and_outputs(memory_attention, family, base_models):
    n, _, c = FAMILIES[family][1]
    tomeplug.patch(memory_attention, "tome", r=0.5, scope="block")
    layer = memory_attention.layers[0]
    tokens, memory = torch.zeros(1, 2, n, c), torch.zeros(1, 2, n, 64)
    with pytest.raises(ValueError, match=r"got queries of shape \(1, 2, .*\(batch, 1, tokens, channels\)"):
        layer(tokens, memory, memory, None)
    small = (math.isqrt(n) - 1) ** 2  # a square grid, not the RoPE table's
    curr, memory = torch.zeros(small, 1, c), torch.zeros(small + 1, 1, 64)
    with pytest.raises(ValueError, match=f"got {small} frame tokens, but its RoPE table .* has {n} cells"):
        memory_attention(curr, memory, torch.zeros_like(curr), memory, 1)
    # transformers records no memory-attention output (a new one would need refusing where layers merge)
    assert set(type(base_models[family])._can_record_outputs) == {"mask_decoder_attentions"}


def sam2_track(model, frames: np.ndarray) -> torch.Tensor:
    """Every frame's mask logits for two objects clicked on frame 0, tracked in a Sam2VideoProcessor session."""
    from tiny_hf_sam2 import sam2_processor

    processor = sam2_processor(video=True)
    session = processor.init_video_session(video=list(frames), inference_device="cpu")
    processor.add_inputs_to_inference_session(
        session, frame_idx=0, obj_ids=[1, 2], input_points=[[[[40, 45]], [[80, 90]]]], input_labels=[[[1], [1]]]
    )
    with torch.no_grad():
        model(inference_session=session, frame_idx=0)
        return torch.stack([out.pred_masks for out in model.propagate_in_video_iterator(session)])


def sam3_track(model, frames: np.ndarray) -> torch.Tensor:
    """The same in a Sam3TrackerVideoProcessor session."""
    from transformers import Sam2VideoVideoProcessor, Sam3ImageProcessor, Sam3TrackerVideoProcessor

    size = {"height": 140, "width": 140}
    processor = Sam3TrackerVideoProcessor(Sam3ImageProcessor(size=size), Sam2VideoVideoProcessor(size=size))
    session = processor.init_video_session(video=frames, inference_device="cpu")
    processor.add_inputs_to_inference_session(
        inference_session=session,
        frame_idx=0,
        obj_ids=[1, 2],
        input_points=[[[[60, 70]], [[30, 100]]]],
        input_labels=[[[1], [1]]],
    )
    with torch.no_grad():
        model(inference_session=session, frame_idx=0)
        return torch.stack([out.pred_masks for out in model.propagate_in_video_iterator(session)])


def conditioned_features(model, track, frames) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The masks of :func:`sam2_track` / :func:`sam3_track` and the memory attention's output of every call."""
    outputs = []
    hook = model.memory_attention.register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        return track(model, frames), outputs
    finally:
        hook.remove()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_video_session_end_to_end_with_memory_attention_merging(base_models, family):
    """A 4-frame synthetic video, two objects: r = 0 (and memory_r = 0) exact, merging changes the memory
    attention's output on every call after the prompted frame, unpatching restores upstream. (The tiny SAM 3
    tracker finds no object after frame 0, so its masks are the constant "no object" logits either way.)"""
    model = copy.deepcopy(base_models[family])
    track = sam2_track if family == "sam2" else sam3_track
    frames = (np.random.default_rng(1).random((4, 120, 100, 3)) * 255).astype(np.uint8)
    reference, dense = conditioned_features(model, track, frames)
    assert reference.shape[:2] == (4, 2) and len(dense) == 3 * 2  # frames 1..3, one call per object
    with tomeplug.patch(model, "tome", r=0.0, memory_r=0.0, scope="span", target="memory_attention"):
        masks, outputs = conditioned_features(model, track, frames)
    assert torch.equal(masks, reference) and all(torch.equal(a, b) for a, b in zip(outputs, dense, strict=True))
    calls = []
    hook = model.memory_attention.layers[0].linear1.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[-2]))
    with tomeplug.patch(model, "tome", r=0.5, memory_r=0.5, scope="block", target="memory_attention"):
        merged, outputs = conditioned_features(model, track, frames)
    hook.remove()
    assert calls == [FAMILIES[family][1][0] // 2] * len(dense)  # every memory-attention call merged
    assert torch.equal(merged[0], reference[0]) and merged.isfinite().all()
    assert all(not torch.allclose(a, b, atol=1e-3) for a, b in zip(outputs, dense, strict=True))
    if family == "sam2":
        assert all(not torch.allclose(merged[f], reference[f], atol=1e-4) for f in range(1, 4))
    assert torch.equal(track(model, frames), reference) and no_trace_left(model)

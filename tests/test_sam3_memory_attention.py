"""Merging in SAM 3's tracker memory attention (adapter ``sam3_memory_attention``, target ``memory_attention``).

On tiny modules built with sam3's classes (``tiny_sam3_memory``): r = 0 is bit for bit upstream, unpatching restores
it, merging changes it; the same weights in sam2's ``MemoryAttention`` patched by ``sam2_memory_attention`` give the
same merged output (the two modules compute the same thing upstream, so this is an independent reference for every
scope and ``memory_r``); layers without cross-attention, ``use_rope_real``, a batch of objects and fullgraph compile.
End to end: sam3's tracker (``tiny_models.tiny_sam3_tracker``) tracks a synthetic video with its memory attention
merged, and Ultralytics' SAM 3 tracker model merges as sam3's with the same weights.
"""

from __future__ import annotations

import pickle

import pytest
import test_adapter_sam3_video as video_tests
import torch
from test_memory_attention import PermuteConfig
from tiny_models import run_memory_attention
from tiny_sam3_memory import run_sam3_memory_attention, tiny_sam2_memory_attention, tiny_sam3_memory_attention

import tomeplug

pytest.importorskip("sam3")

SCOPES = ["attn", "block", "span"]

# sam3's tiny tracker, the synthetic video and the CPU shims of test_adapter_sam3_video
tracker, video_folder, on_cpu, track = (
    video_tests.tracker,
    video_tests.video_folder,
    video_tests.on_cpu,
    video_tests.track,
)


def frame_tokens(batch: int = 2, n: int = 64, seed: int = 0) -> torch.Tensor:
    """The frame's tokens (N, B, 32), an 8 x 8 grid per object."""
    return torch.randn(n, batch, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("memory_r", [None, 0.5])
def test_r0_is_exact_merging_changes_and_unpatch_restores(scope, memory_r):
    encoder, curr = tiny_sam3_memory_attention(), frame_tokens()
    with torch.no_grad():
        dense = run_sam3_memory_attention(encoder, curr)
        zero = 0.0 if memory_r is not None else None
        with tomeplug.patch(encoder, "tome", r=0.0, memory_r=zero, scope=scope) as handle:
            assert handle.adapter == "sam3_memory_attention" and handle.target == "memory_attention"
            assert torch.equal(run_sam3_memory_attention(encoder, curr), dense)
        with tomeplug.patch(encoder, "tome", r=0.5, memory_r=memory_r, scope=scope):
            swapped = type(encoder).__name__
            merged = run_sam3_memory_attention(encoder, curr)
        assert torch.equal(run_sam3_memory_attention(encoder, curr), dense)
    assert swapped.startswith("Merging") == (scope == "span" or memory_r is not None)
    assert type(encoder).__name__ == "TransformerEncoderCrossAttention"
    assert merged.isfinite().all() and not torch.allclose(merged, dense, atol=1e-3)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize(("r", "memory_r", "prop_attn"), [(0.5, None, False), (0.5, 0.5, True), (0.0, 0.5, False)])
def test_merged_output_equals_sam2s_memory_attention_with_the_same_weights(scope, r, memory_r, prop_attn):
    """sam2's MemoryAttention patched by sam2_memory_attention is the reference: one state dict, one plan."""
    sam3, sam2 = tiny_sam3_memory_attention(), tiny_sam2_memory_attention()
    sam2.load_state_dict(sam3.state_dict())
    curr = frame_tokens()
    options = dict(r=r, memory_r=memory_r, scope=scope, prop_attn=prop_attn)
    with torch.no_grad():
        dense = run_memory_attention(sam2, curr)
        assert torch.equal(run_sam3_memory_attention(sam3, curr), dense)
        with tomeplug.patch(sam2, "pitome", **options) as handle:
            assert handle.adapter == "sam2_memory_attention"
            reference = run_memory_attention(sam2, curr)
        with tomeplug.patch(sam3, "pitome", **options):
            merged = run_sam3_memory_attention(sam3, curr)
    torch.testing.assert_close(merged, reference)
    assert not torch.allclose(merged, dense, atol=1e-3)


def test_the_span_loop_returns_upstreams_dict():
    encoder, curr = tiny_sam3_memory_attention(), frame_tokens()
    pos, (memory, memory_pos) = frame_tokens(seed=1), torch.randn(2, 132, 2, 16)
    call = dict(src=[curr], prompt=memory, src_key_padding_mask=[None], src_pos=[pos], prompt_pos=memory_pos)
    with torch.no_grad():
        dense = encoder(**call, num_obj_ptr_tokens=4)
        with tomeplug.patch(encoder, "tome", r=0.0, scope="span"):
            exact = encoder(**call, num_obj_ptr_tokens=4)
    assert dense.keys() == exact.keys() == {"memory", "pos_embed", "padding_mask"}
    assert torch.equal(exact["memory"], dense["memory"]) and torch.equal(exact["pos_embed"], dense["pos_embed"])
    assert exact["padding_mask"] is dense["padding_mask"] is None


@pytest.mark.parametrize("scope", SCOPES)
def test_layers_without_cross_attention(scope):
    """Layer 0 built without cross-attention (sam3's remove_cross_attention_layers): r = 0 exact; a permuting plan
    (every token its own slot, slots reversed) runs the merged path and equals upstream to rounding, which needs
    the span cut where cross-attention starts (a run's rotations come from its first layer); memory_r is refused
    on that layer and merges the others' memory."""
    encoder, curr = tiny_sam3_memory_attention(layers=3, removed=(0,)), frame_tokens()
    assert encoder.layers[0].cross_attn_image is None
    with torch.no_grad():
        dense = run_sam3_memory_attention(encoder, curr)
        with tomeplug.patch(encoder, "tome", r=0.0, scope=scope):
            assert torch.equal(run_sam3_memory_attention(encoder, curr), dense)
        with tomeplug.patch(encoder, PermuteConfig(r=0.25), scope=scope):
            if scope == "span":
                assert encoder.tomeplug_runs == ((0,), (1, 2))
            torch.testing.assert_close(run_sam3_memory_attention(encoder, curr), dense, atol=1e-5, rtol=1e-5)
        with pytest.raises(
            ValueError, match="layer 0 has no cross-attention.*leave it out of the layers that set memory_r"
        ):
            tomeplug.patch(encoder, "tome", r=0.5, memory_r=0.5, scope=scope)
        tomeplug.patch(encoder, "tome", layers=[1, 2], r=0.5, memory_r=0.5, scope=scope)  # layer 0 runs upstream's
        merged = run_sam3_memory_attention(encoder, curr)
    assert merged.isfinite().all() and not torch.allclose(merged, dense, atol=1e-3)


def test_use_rope_real_merges_as_the_complex_rotation():
    """sam3's real-arithmetic RoPE and its complex one, same weights: the same output dense and merged."""
    complex_rope, real_rope, curr = (
        tiny_sam3_memory_attention(),
        tiny_sam3_memory_attention(use_rope_real=True),
        frame_tokens(),
    )
    real_rope.load_state_dict(complex_rope.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            run_sam3_memory_attention(real_rope, curr), run_sam3_memory_attention(complex_rope, curr)
        )
        for encoder in (complex_rope, real_rope):
            tomeplug.patch(encoder, "tome", r=0.5, memory_r=0.5, scope="span")
        merged = run_sam3_memory_attention(complex_rope, curr)
        torch.testing.assert_close(run_sam3_memory_attention(real_rope, curr), merged)


def test_batched_objects_plan_per_object():
    """B = 2 objects in one call: each object's rows equal its own call's (one plan per batch row)."""
    encoder, curr = tiny_sam3_memory_attention(), frame_tokens()
    tomeplug.patch(encoder, "tome", r=0.5, memory_r=0.5, scope="span")
    generator = torch.Generator().manual_seed(1)
    memory, memory_pos = torch.randn(2, 2 * 64 + 4, 2, 16, generator=generator)
    pos = torch.randn(64, 2, 32, generator=generator)
    with torch.no_grad():
        both = run_sam3_memory_attention(encoder, curr)  # the same inputs (tiny_models.run_memory_attention's)
        for b in range(2):
            one = slice(b, b + 1)
            out = encoder([curr[:, one]], memory[:, one], None, None, [None], None, [pos[:, one]], memory_pos[:, one],
                          num_obj_ptr_tokens=4)  # fmt: skip
            torch.testing.assert_close(out["memory"], both[:, one], atol=1e-5, rtol=1e-5)


def test_a_patched_memory_attention_pickles_with_its_patch():
    encoder, curr = tiny_sam3_memory_attention(), frame_tokens()
    with torch.no_grad():
        dense = run_sam3_memory_attention(encoder, curr)
        tomeplug.patch(encoder, "tome", r=0.5, memory_r=0.5, scope="span")
        merged = run_sam3_memory_attention(encoder, curr)
        restored = pickle.loads(pickle.dumps(encoder))
        assert type(restored).__name__ == "MergingSam3MemoryEncoder_TransformerEncoderCrossAttention"
        assert torch.equal(run_sam3_memory_attention(restored, curr), merged)
        assert tomeplug.unpatch(restored) and torch.equal(run_sam3_memory_attention(restored, curr), dense)


@pytest.mark.parametrize("scope", SCOPES)
def test_fullgraph_compile_matches_eager(scope):
    torch._dynamo.reset()
    encoder = tiny_sam3_memory_attention().double()
    tomeplug.patch(encoder, "tome", r=0.5, memory_r=0.5, scope=scope, prop_attn=True)
    curr = frame_tokens(batch=1).double()

    def call(module, x):
        generator = torch.Generator().manual_seed(1)
        memory, memory_pos = torch.randn(2, 2 * 64 + 4, 1, 16, generator=generator, dtype=torch.float64)
        pos = torch.randn(64, 1, 32, generator=generator, dtype=torch.float64)
        return module(x, memory, src_pos=pos, prompt_pos=memory_pos, num_obj_ptr_tokens=4)["memory"]

    with torch.no_grad():
        expected = call(encoder, curr)
        compiled = torch.compile(encoder, fullgraph=True, backend="aot_eager", dynamic=False)
        torch.testing.assert_close(call(compiled, curr), expected, atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


def test_what_is_not_supported_raises_clearly():
    with pytest.raises(ValueError, match="layer 0 runs cross-attention before self-attention"):
        tomeplug.patch(tiny_sam3_memory_attention(cross_attention_first=True), "tome", r=0.5)
    with pytest.raises(ValueError, match="post-norm"):
        tomeplug.patch(tiny_sam3_memory_attention(pre_norm=False), "tome", r=0.5)
    with pytest.raises(ValueError, match=r"TransformerEncoderCrossAttention\(batch_first=False\) is not supported"):
        tomeplug.patch(tiny_sam3_memory_attention(batch_first=False), "tome", r=0.5)
    encoder = tiny_sam3_memory_attention()
    tomeplug.patch(encoder, "tome", r=0.5, scope="span")
    curr, memory = frame_tokens(), torch.randn(132, 2, 16)
    with pytest.raises(ValueError, match="src_mask not supported"):
        encoder(curr, memory, src_mask=torch.zeros(64, 64), src_pos=curr, prompt_pos=memory)
    tomeplug.patch(encoder, "tome", r=0.5, scope="block")
    with pytest.raises(ValueError, match="memory_key_padding_mask not supported"):
        encoder.layers[0](curr, memory, memory_key_padding_mask=torch.zeros(2, 132, dtype=torch.bool))
    tomeplug.unpatch(encoder)
    encoder.forward = encoder.forward  # as sam3's tracker built with compile_mode
    with pytest.raises(ValueError, match="would bypass the span loop and the memory merge"):
        tomeplug.patch(encoder, "tome", r=0.5, scope="span")
    assert not [m for m in encoder.modules() if type(m).__name__.startswith("Merging")]


@pytest.mark.parametrize("scope", SCOPES)
def test_tracker_tracks_a_video_with_its_memory_attention_merged(scope, tracker, video_folder, on_cpu, registry):
    """sam3's tracker on three frames: r = 0 exact; merged (queries and memory), frame 0 (the prompt, no memory)
    unchanged and frames 1, 2 changed, each layer on half of the 10 x 10 frame's tokens; unpatch restores."""
    assert registry.targets_of(tracker) == ["encoder", "memory_attention"]
    reference = track(tracker, video_folder)
    with tomeplug.patch(tracker, "tome", r=0.0, memory_r=0.0, scope=scope, target="memory_attention") as handle:
        assert handle.adapter == "sam3_memory_attention"
        assert all(torch.equal(masks, reference[index]) for index, masks in track(tracker, video_folder).items())
    tokens = []
    layers = tracker.transformer.encoder.layers
    hooks = [layer.linear1.register_forward_hook(lambda m, a, out: tokens.append(a[0].shape[1])) for layer in layers]
    with tomeplug.patch(tracker, "tome", r=0.5, memory_r=0.5, scope=scope, target="memory_attention"):
        merged = track(tracker, video_folder)
    for hook in hooks:
        hook.remove()
    assert set(tokens) == ({100} if scope == "attn" else {50}) and len(tokens) == 2 * len(layers)
    video_tests.assert_masks_like(merged, reference)
    assert torch.equal(merged[0], reference[0])
    assert all(not torch.equal(merged[index], reference[index]) for index in (1, 2))
    assert all(torch.equal(masks, reference[index]) for index, masks in track(tracker, video_folder).items())


@pytest.mark.parametrize("scope", SCOPES)
def test_ultralytics_sam3_memory_attention_merges_as_sam3s_with_the_same_weights(scope, registry):
    """Ultralytics' SAM3Model (its own MemoryAttention copy, adapter ultralytics_sam2_memory_attention) and sam3's
    tracker memory attention at the tracker's sizes with one state dict: the same output dense and merged."""
    from sam3.model_builder import _create_tracker_transformer
    from tiny_ultralytics import tiny_sam3

    model = tiny_sam3()
    ultralytics = model.memory_attention
    sam3 = _create_tracker_transformer().encoder.eval()
    sam3.load_state_dict(ultralytics.state_dict())
    assert registry.adapter_for(model, "memory_attention").name == "ultralytics_sam2_memory_attention"
    curr = torch.randn(64, 2, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = run_sam3_memory_attention(sam3, curr)
        torch.testing.assert_close(run_memory_attention(ultralytics, curr), dense)
        with tomeplug.patch(model, "tome", r=0.5, memory_r=0.5, scope=scope, target="memory_attention") as handle:
            assert handle.adapter == "ultralytics_sam2_memory_attention"
            merged = run_memory_attention(ultralytics, curr)
        with tomeplug.patch(sam3, "tome", r=0.5, memory_r=0.5, scope=scope) as handle:
            assert handle.adapter == "sam3_memory_attention"
            torch.testing.assert_close(run_sam3_memory_attention(sam3, curr), merged)
    assert not torch.allclose(merged, dense, atol=1e-3)


video_model, video_reference = video_tests.video_model, video_tests.video_reference


def test_video_model_tracks_with_its_trackers_memory_attention_merged(video_model, video_reference, on_cpu, registry):
    """sam3's video model (a detector and a tracker without backbone): its one memory attention, in the tracker, is
    found and merged; r = 0 exact, merged masks of the object on every frame, frames after the prompt changed."""
    assert registry.adapter_for(video_model, "memory_attention").name == "sam3_memory_attention"
    with tomeplug.patch(video_model, "tome", r=0.0, scope="span", target="memory_attention"):
        assert type(video_model.tracker.transformer.encoder).__name__.startswith("Merging")
        exact = video_tests.segment_video(video_model)
    with tomeplug.patch(video_model, "tome", r=0.5, memory_r=0.5, scope="span", target="memory_attention"):
        merged = video_tests.segment_video(video_model)
    for index, (ids, masks) in video_reference.items():
        assert exact[index][0] == ids and (exact[index][1] == masks).all()
        assert merged[index][0] == ids and merged[index][1].shape == masks.shape and merged[index][1].any()
    assert any((merged[index][1] != masks).any() for index, (_, masks) in video_reference.items() if index > 0)

"""Merging SAM 2's memory (option ``memory_r`` of target ``memory_attention``): the memory frames' spatial tokens
as the cross-attention's keys and values, with proportional attention and RoPE at the kept cells.

End to end through a tiny official SAM2VideoPredictor (2 objects, 5 frames) and on the memory attention alone:
memory_r = 0 is bit for bit upstream; merging shortens the cross-attention's keys to the pointers plus
M of each memory frame's N tokens, planned once for all layers (once per frame: test_memory_plan_cache.py); a
permuting plan equals upstream to rounding only if every merged key is rotated at its kept cell; merging
duplicated memory tokens equals upstream only with ``log(size)`` on their logits (the mass a merged key keeps).
"""

from __future__ import annotations

import pytest
import test_memory_attention as memory_tests
import torch
from test_memory_attention import LAYERS, PermuteConfig, same, track
from tiny_models import run_memory_attention, tiny_sam2

import tomeplug
from tomeplug_adapters import sam2_memory_attention, sam2_memory_keys

SCOPES = ["attn", "block", "span"]
N = 64  # the tiny model's frame: 8 x 8 tokens

# fixtures shared with test_memory_attention: the tiny predictor, the 2-object video and upstream's logits
base_predictor, predictor = memory_tests.base_predictor, memory_tests.predictor
video, reference = memory_tests.video, memory_tests.reference


def key_counts(predictor, video) -> tuple[list[tuple[int, int]], dict]:
    """(keys the first layer's cross-attention sees, pointer tokens) for every memory-attention call; the logits."""
    calls, pointers = [], []
    memory_attention = predictor.memory_attention
    hooks = [
        memory_attention.register_forward_pre_hook(
            lambda m, args, kwargs: pointers.append(kwargs["num_obj_ptr_tokens"]), with_kwargs=True
        ),
        memory_attention.layers[0].cross_attn_image.k_proj.register_forward_hook(
            lambda m, a, out: calls.append(a[0].shape[1])
        ),
    ]
    try:
        logits = track(predictor, video)
    finally:
        for hook in hooks:
            hook.remove()
    return list(zip(calls, pointers, strict=True)), logits


@pytest.mark.parametrize("scope", SCOPES)
def test_memory_r0_is_exact_merging_shortens_the_keys_and_unpatch_restores(predictor, video, reference, scope):
    with tomeplug.patch(predictor, "tome", r=0.0, memory_r=0.0, scope=scope, target="memory_attention") as handle:
        assert handle.schedule[0].memory_r == 0.0 and handle.to_dict()["layers"][0]["memory_r"] == 0.0
        assert same(track(predictor, video), reference)
    dense, _ = key_counts(predictor, video)
    with tomeplug.patch(predictor, "tome", r=0.0, memory_r=0.5, scope=scope, target="memory_attention"):
        merged, logits = key_counts(predictor, video)
    # frames 1..4, each object on its own: the prompted frame's memory, then up to 3 more frames, and pointers
    assert [(k - p) // N for k, p in dense] == [1, 1, 2, 2, 3, 3, 4, 4] and all(p > 0 for _, p in dense)
    assert merged == [(p + (k - p) // 2, p) for k, p in dense]  # half of each frame's tokens, every pointer
    assert torch.equal(logits[0], reference[0])
    assert all(logits[f].isfinite().all() and not torch.equal(logits[f], reference[f]) for f in range(1, 5))
    assert same(track(predictor, video), reference)


def test_the_memory_is_planned_once_per_call_for_every_layer(predictor, video, monkeypatch):
    planned = []
    real = sam2_memory_attention.merge_memory
    monkeypatch.setattr(sam2_memory_attention, "merge_memory", lambda *args: planned.append(real(*args)) or planned[-1])
    calls = []
    tomeplug.patch(predictor, "tome", r=0.5, memory_r=0.5, scope="block", target="memory_attention")
    hook = predictor.memory_attention.register_forward_hook(lambda *a: calls.append(1))
    track(predictor, video)
    hook.remove()
    assert len(calls) == len(planned) == 4 * 2 and all(p is not None for p in planned)  # not x LAYERS


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("query_r", [0.0, 0.25])
def test_a_permuting_memory_plan_equals_upstream(predictor, video, reference, scope, query_r):
    """Memory (and queries, r=0.25) planned by reversing every frame's tokens: keys rotated at their kept
    cells and log(1) = 0 give upstream's masks to rounding, the queries merged or not."""
    strategy = PermuteConfig(r=query_r)
    with tomeplug.patch(predictor, strategy, memory_r=0.25, scope=scope, target="memory_attention"):
        permuted = track(predictor, video)
    for frame in reference:
        torch.testing.assert_close(permuted[frame], reference[frame], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scope", SCOPES)
def test_permuted_memory_keys_need_their_kept_cells_rotations(scope, monkeypatch):
    """On the memory attention's own output: the permuting plan matches upstream; rotating each merged key at
    the cell of its slot index instead of its kept cell is off by far more."""
    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention
    curr = torch.randn(N, 2, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = run_memory_attention(memory_attention, curr)
        with tomeplug.patch(memory_attention, PermuteConfig(r=0.0), memory_r=0.25, scope=scope):
            torch.testing.assert_close(run_memory_attention(memory_attention, curr), expected, atol=1e-5, rtol=1e-5)
            real = sam2_memory_keys.kept_rotations
            monkeypatch.setattr(sam2_memory_keys, "kept_rotations", lambda table, kept: real(table, kept.flip(-1)))
            wrong = run_memory_attention(memory_attention, curr)
    assert (wrong - expected).abs().max() > 1e-2


def test_merged_duplicate_memory_tokens_keep_their_mass(monkeypatch):
    """Every memory token duplicated (tokens 2i and 2i + 1 equal, RoPE off): ToMe at memory_r = 0.5 merges each
    pair, and with log(2) on the merged keys' logits the output is upstream's; without it, it is not."""
    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention
    for layer in memory_attention.layers:
        for attn in (layer.self_attn, layer.cross_attn_image):
            attn.freqs_cis = torch.ones_like(attn.freqs_cis)  # no rotation: duplicated keys stay equal
    generator = torch.Generator().manual_seed(0)
    curr, curr_pos = torch.randn(2, N, 2, 32, generator=generator)
    memory, memory_pos = torch.randn(2, N, 2, 16, generator=generator).repeat_interleave(2, dim=1)  # 2 frames
    pointers, pointer_pos = torch.randn(2, 4, 2, 16, generator=generator)
    memory, memory_pos = torch.cat([memory, pointers]), torch.cat([memory_pos, pointer_pos])

    def run():
        return memory_attention([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=4)

    with torch.no_grad():
        expected = run()
        keys = []
        hook = memory_attention.layers[1].cross_attn_image.k_proj.register_forward_hook(
            lambda m, a, out: keys.append(a[0].shape[1])
        )
        with tomeplug.patch(memory_attention, "tome", r=0.0, memory_r=0.5, scope="span"):
            torch.testing.assert_close(run(), expected, atol=1e-5, rtol=1e-5)
            assert keys == [N + 4]  # 2 frames of 32 merged pairs, then the pointers
            merged = memory_attention.layers[0].merged_memory(memory.transpose(0, 1), memory_pos.transpose(0, 1), 4, N)
            assert torch.equal(merged.log_size.exp()[..., :N], torch.full((2, 1, 1, N), 2.0))
            assert torch.equal(merged.log_size[..., N:], torch.zeros(2, 1, 1, 4))
        hook.remove()
        torch.testing.assert_close(run(), expected, atol=0, rtol=0)
        real = sam2_memory_keys.log_size_bias
        monkeypatch.setattr(sam2_memory_keys, "log_size_bias", lambda size, dtype: torch.zeros_like(real(size, dtype)))
        with tomeplug.patch(memory_attention, "tome", r=0.0, memory_r=0.5, scope="span"):
            massless = run()  # the same merge without log(size)
    assert (massless - expected).abs().max() > 1e-3


def test_memory_and_queries_merge_with_an_encoder_patch(predictor, video, reference):
    memory_only = tomeplug.patch(predictor, "tome", r=0.0, memory_r=0.5, target="memory_attention")
    alone = track(predictor, video)
    memory_only.remove()
    tomeplug.patch(predictor, "tome", r=0.5, scope="span")
    both = tomeplug.patch(predictor, "pitome", r=0.5, memory_r=0.5, scope="span", target="memory_attention")
    assert both.to_dict()["layers"][1]["memory_r"] == 0.5
    merged = track(predictor, video)
    assert all(merged[f].isfinite().all() for f in merged)
    assert not same(merged, alone) and not same(merged, reference)
    assert tomeplug.unpatch(predictor) and same(track(predictor, video), reference)
    assert type(predictor.memory_attention).__name__ == "MemoryAttention"


def test_mixed_layers_merge_the_memory_only_where_asked(predictor, video):
    """Layer 0 attends to the merged memory, layer 1 (memory_r unset) to the whole memory."""
    seen = {0: [], 1: []}
    hooks = [
        predictor.memory_attention.layers[i].cross_attn_image.k_proj.register_forward_hook(
            lambda m, a, out, i=i: seen[i].append(a[0].shape[1])
        )
        for i in (0, 1)
    ]
    tomeplug.patch(
        predictor,
        layers={0: {"strategy": "tome", "memory_r": 0.5}, 1: {"strategy": "tome"}},
        r=0.0,
        target="memory_attention",
    )
    track(predictor, video)
    for hook in hooks:
        hook.remove()
    assert all(merged < whole for merged, whole in zip(seen[0], seen[1], strict=True)) and len(seen[0]) == 8


def test_batched_objects_plan_their_memory_per_object():
    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention
    curr = torch.randn(N, 2, 32, generator=torch.Generator().manual_seed(0))
    tomeplug.patch(memory_attention, "tome", r=0.5, memory_r=0.5, scope="block")
    with torch.no_grad():
        both = run_memory_attention(memory_attention, curr)
        generator = torch.Generator().manual_seed(1)
        memory, memory_pos = torch.randn(2, 2 * N + 4, 2, 16, generator=generator)
        curr_pos = torch.randn(N, 2, 32, generator=generator)
        for b in range(2):
            one = memory_attention(
                [curr[:, b : b + 1]], memory[:, b : b + 1], [curr_pos[:, b : b + 1]], memory_pos[:, b : b + 1], 4
            )
            torch.testing.assert_close(one, both[:, b : b + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scope", SCOPES)
def test_fullgraph_compile_matches_eager(scope):
    torch._dynamo.reset()
    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention
    tomeplug.patch(memory_attention, "tome", r=0.5, memory_r=0.5, scope=scope)
    curr = torch.randn(N, 1, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = run_memory_attention(memory_attention, curr)
        compiled = torch.compile(memory_attention, fullgraph=True, backend="aot_eager", dynamic=False)
        torch.testing.assert_close(run_memory_attention(compiled, curr), expected, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_nonsense_memory_options_raise_clearly(predictor):
    with pytest.raises(ValueError, match="memory_r merges the memory.*'sam2_hiera' \\(target 'encoder'\\)"):
        tomeplug.patch(predictor, "tome", r=0.5, memory_r=0.5)
    with pytest.raises(ValueError, match="memory_r=0.7 is not a merge fraction.*r=0.7 is out of range"):
        tomeplug.patch(predictor, "tome", r=0.5, memory_r=0.7, target="memory_attention")
    with pytest.raises(TypeError, match="memory_r must be a float or None"):
        tomeplug.patch(predictor, "tome", memory_r="half", target="memory_attention")
    with pytest.raises(ValueError, match="layers 0 and 1 plan the memory differently"):
        tomeplug.patch(
            predictor,
            layers={0: {"strategy": "tome", "memory_r": 0.5}, 1: {"strategy": "pitome", "memory_r": 0.5}},
            target="memory_attention",
        )
    predictor.memory_attention.forward = predictor.memory_attention.forward  # as SAM2VideoPredictorVOS's compile
    with pytest.raises(ValueError, match="would bypass the span loop and the memory merge"):
        tomeplug.patch(predictor, "tome", r=0.5, memory_r=0.5, scope="block", target="memory_attention")
    del predictor.memory_attention.forward
    assert tomeplug.active_patch(predictor, "memory_attention") is None
    assert not [m for m in predictor.modules() if type(m).__name__.startswith("Merging")]


def test_ultralytics_memory_attention_merges_its_memory_as_sam2s():
    """Ultralytics' vendored MemoryAttention and sam2's at the official SAM 2.1 size with one state dict:
    the same merged output with memory_r, queries merged or not."""
    from tiny_ultralytics import tiny_sam2 as tiny_ultralytics_sam2

    from tomeplug_eval.architectures import instantiate_sam2, sam2_config

    ultralytics = tiny_ultralytics_sam2().memory_attention
    sam2 = instantiate_sam2(sam2_config("sam2.1/sam2.1_hiera_t.yaml").memory_attention).eval()
    sam2.load_state_dict(ultralytics.state_dict())
    curr = torch.randn(N, 2, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = run_memory_attention(sam2, curr)
        for r in (0.0, 0.5):
            with tomeplug.patch(ultralytics, "tome", r=r, memory_r=0.5, scope="span") as handle:
                assert handle.adapter == "ultralytics_sam2_memory_attention"
                merged = run_memory_attention(ultralytics, curr)
            with tomeplug.patch(sam2, "tome", r=r, memory_r=0.5, scope="span"):
                torch.testing.assert_close(run_memory_attention(sam2, curr), merged)
            assert not torch.allclose(merged, dense, atol=1e-3)


def test_a_layer_called_alone_merges_the_memory_itself():
    """A patched layer called without its MemoryAttention (no memory merged for it) plans the memory itself,
    its RoPE-free keys the pointers: the same output as with the memory the MemoryAttention merges."""
    memory_attention = tiny_sam2(memory_layers=LAYERS).memory_attention
    tomeplug.patch(memory_attention, "tome", r=0.5, memory_r=0.5, scope="block")
    layer = memory_attention.layers[1]
    generator = torch.Generator().manual_seed(2)
    tgt, query_pos = torch.randn(2, 2, N, 32, generator=generator)
    memory, pos = torch.randn(2, 2, 2 * N + 4, 16, generator=generator)
    with torch.no_grad():
        given = layer.merged_memory(memory, pos, 4, N)
        alone = layer(tgt, memory, pos=pos, query_pos=query_pos, num_k_exclude_rope=4)
        torch.testing.assert_close(alone, layer(tgt, memory, pos, query_pos, 4, tomeplug_memory=given), atol=0, rtol=0)
        tomeplug.unpatch(memory_attention)
        assert not torch.allclose(alone, layer(tgt, memory, pos=pos, query_pos=query_pos, num_k_exclude_rope=4))

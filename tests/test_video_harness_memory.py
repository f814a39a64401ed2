"""The video harness with SAM 2's memory attention: per-frame time split, memory-attention FLOPs, memory_layers."""

from __future__ import annotations

import math

import pytest
import torch
from harness_helpers import composed, run_video
from tiny_models import tiny_sam2

import tomeplug
from tomeplug_eval import flops
from tomeplug_eval.run_spec import resolve
from tomeplug_eval.video.memory_cost import memory_attention_flops, steady_memory_inputs

VIDEO = "sam2.sam2_video_predictor.SAM2VideoPredictor"


def check_split(record: dict) -> None:
    """The per-frame split: every part timed and positive, summing to the frame's wall-clock."""
    split = record["latency"]["split"]
    parts = [split["encoder_s"], split["memory_attention_s"], split["rest_s"]]
    assert all(part > 0 for part in parts), split
    assert math.isclose(math.fsum(parts), split["frame_s"], rel_tol=1e-9)
    assert math.isclose(split["frame_s"], record["latency"]["seconds_per_frame"], rel_tol=1e-9)


def test_memory_merging_run_reports_split_and_memory_flops(tmp_path):
    """Baseline and memory-only merging on sam2_tiny: fidelity 1 vs < 1, memory FLOPs counted and lower."""
    none = run_video(tmp_path, "strategy=none")
    memory = run_video(tmp_path, "strategy=tome", "r=0.5", "strategy.scope=span", "layers=[]", "memory_layers=all")
    for record in (none, memory):
        check_split(record)
    assert none["metrics"]["fidelity_J"] == 1.0
    assert memory["metrics"]["fidelity_J"] < 1.0
    dense, merged = none["flops"]["memory_attention"], memory["flops"]["memory_attention"]
    assert dense["gflops"] > 0 and merged["dense_gflops"] == dense["gflops"]
    assert merged["gflops"] < dense["gflops"] and merged["ratio"] < 1
    assert memory["flops"]["gflops"] == none["flops"]["gflops"]  # the encoder is not merged
    assert none["flops"]["frame_gflops"] == pytest.approx(none["flops"]["gflops"] + dense["gflops"])
    assert memory["memory_layers"] is None and memory["blocks"]["layers"] == {}
    assert set(memory["blocks"]["memory_attention"]["layers"]) == {"0"}  # sam2_tiny: one memory layer
    table = (tmp_path / "results.md").read_text()
    assert "mem. GFLOPs" in table and "mem. ms/frame" in table
    assert "| tome | []; memory all |" in table
    # strategy.memory_r: the memory frames merge too (the encoder, merged here, takes no memory_r)
    both = run_video(
        tmp_path, "strategy=tome", "r=0.5", "strategy.scope=span", "strategy.memory_r=0.5", "memory_layers=all"
    )
    assert (
        both["flops"]["memory_attention"]["gflops"] < merged["gflops"]
        and both["flops"]["gflops"] < none["flops"]["gflops"]
    )
    assert both["blocks"]["memory_attention"]["layers"]["0"]["memory_r"] == 0.5


def test_memory_attention_flops_are_the_hand_count():
    """A steady-state call of one layer, counted by hand: projections, SDPA, RoPE, MLP, norms."""
    model = tiny_sam2(target=VIDEO)
    call, (curr, memory, *_) = steady_memory_inputs(model)
    n, t, c = curr.shape[0], memory.shape[0], curr.shape[2]
    assert n == (model.image_size // model.backbone_stride) ** 2
    assert t == model.num_maskmem * n + call.num_obj_ptr_tokens and call.num_obj_ptr_tokens > 0
    report = memory_attention_flops(model)
    layer = model.memory_attention.layers[0]
    mem_dim, inner, own = memory.shape[2], layer.cross_attn_image.internal_dim, layer.self_attn.internal_dim
    mlp = layer.linear1.out_features
    linear = 4 * n * c * own + 2 * n * c * inner + 2 * t * mem_dim * inner + 2 * n * c * mlp
    assert report["by_operator"]["linear"] == linear
    assert report["by_operator"]["scaled_dot_product_attention"] == n * n * 2 * own + n * t * 2 * inner
    tomeplug.patch(model, "tome", r=0.5, scope="span", target="memory_attention")
    assert memory_attention_flops(model)["gflops"] < report["gflops"]


def test_memory_layers_errors_are_clear():
    """memory_layers on an image task, or nothing merged at all, fail before any item runs."""
    with composed("model=sam2_tiny", "dataset=synthetic", "strategy=tome", "memory_layers=all") as cfg:
        with pytest.raises(ValueError, match="memory_layers=None merges SAM 2's memory attention"):
            resolve(cfg, "cpu")
    with composed("model=sam2_tiny", "dataset=synthetic_video", "strategy=tome", "layers=[]") as cfg:
        with pytest.raises(ValueError, match="merge nothing"):
            resolve(cfg, "cpu")
    with composed("model=sam2_tiny", "dataset=synthetic_video", "strategy=mix", "layers={0:tome}",
                  "memory_layers=[0]") as cfg:  # fmt: skip
        with pytest.raises(ValueError, match="mapping in memory_layers"):
            resolve(cfg, "cpu")


def test_count_flops_refuses_nothing_in_memory_attention():
    """Every matmul-class op of the patched memory attention has a handle (no UncountedFlopsError)."""
    model = tiny_sam2(target=VIDEO)
    tomeplug.patch(model, "tome", r=0.5, scope="block", target="memory_attention")
    call, inputs = steady_memory_inputs(model)
    with torch.no_grad():
        assert flops.count_flops(call, inputs).total > 0

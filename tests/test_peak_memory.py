"""Peak memory: the deterministic live-tensor meter, and merged encoders holding no more than they need."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

import tomeplug
from tomeplug_eval.memory import MB, LiveTensorPeak

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_meter_counts_new_storages_until_freed():
    """New storages count from their op to their release; views, in-place ops and older tensors add nothing."""
    weight = torch.ones(1000)
    with torch.no_grad(), LiveTensorPeak() as meter:
        weight.add_(1)  # in place on an older tensor
        _ = weight[:500]  # a view of it
        a = torch.zeros(1000)  # 4000 bytes
        b = a * 2  # 4000 more: the peak
        del a
        c = b.view(10, 100).add_(1)  # a view, in place
        d = c.sum()  # 4 bytes, after a was freed
    assert meter.peak_bytes == 8000
    live = sorted((e.op, e.shape, e.nbytes) for e in meter.at_peak)
    assert live == [("mul", (1000,), 4000), ("zeros", (1000,), 4000)]
    assert all(e.where.startswith("test_peak_memory.py:") for e in meter.at_peak)
    assert meter.peak_mb == 8000 / MB and "peak" in meter.report() and d.item() == 1000


def vit_l_layout(img_size: int = 256) -> nn.Module:
    """A tiny SAM ViT with ViT-L's block layout (24 blocks, global 5, 11, 17, 23): the published schedule applies."""
    return ImageEncoderViT(
        img_size=img_size, patch_size=16, embed_dim=32, depth=24, num_heads=2, out_chans=8, use_rel_pos=True,
        window_size=7, global_attn_indexes=[5, 11, 17, 23], norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()  # fmt: skip


def live_peak(encoder: nn.Module, x: torch.Tensor) -> LiveTensorPeak:
    """The live-tensor peak of one forward, as the benchmarks run it."""
    with torch.no_grad(), LiveTensorPeak() as meter:
        encoder(x)
    return meter


def test_paper_schedule_holds_nothing_extra_while_a_dense_global_block_runs():
    """The published schedule leaves global block 11 dense: its attention is the peak of dense and merged
    encoders alike, and no scope holds anything more while it runs (the span encoder's input map and its
    global blocks' outputs are released)."""
    dense = vit_l_layout()
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    expected = live_peak(dense, x)
    for scope in ("attn", "block", "span"):
        patched = copy.deepcopy(dense)
        tomeplug.patch(patched, "tome", "paper", r=0.5, scope=scope)
        assert live_peak(patched, x).peak_bytes == expected.peak_bytes, scope


def test_merged_global_attention_builds_one_bias():
    """A merged global attention holds one (B', heads, M, M) relative-position bias at its peak, not two."""
    encoder = ImageEncoderViT(
        img_size=512, patch_size=16, embed_dim=32, depth=2, num_heads=4, out_chans=8, use_rel_pos=True,
        window_size=7, global_attn_indexes=[1], norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    dense = live_peak(encoder, x)
    tomeplug.patch(encoder, "tome", [1], r=0.5)
    merged = live_peak(encoder, x)
    bias_bytes = 4 * 512 * 512 * 4  # heads x M x M floats, M = 1024 / 2
    largest = sorted((e.nbytes for e in merged.at_peak), reverse=True)
    assert largest[0] == bias_bytes and largest[1] <= bias_bytes / 4  # the rest: a head's share at most
    assert merged.peak_bytes < 2 * bias_bytes < dense.peak_bytes / 2


def test_live_memory_bench_reports_each_scope(tmp_path):
    """bench/live_memory.py end to end on the tiny SAM: a peak per encoder, and the tensors alive at it."""
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, str(BENCH / "live_memory.py"), "--model", "sam_tiny", "--scopes", "attn,span"]
    env = {k: v for k, v in os.environ.items() if k != "TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD"}  # the installed plugins
    done = subprocess.run(
        [*command, "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(out.read_text())
    assert row["dense_live_peak_mb"] > row["attn_live_peak_mb"] > 0 and row["span_live_peak_mb"] > 0
    assert "sam_tiny 256px dense: peak" in done.stdout and "sdpa_attention.py" in done.stdout

"""bench/tune_vs_paper.py: the tuned schedule against the published one at its FLOPs, on the ViT-L-layout SAM."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import tomeplug
from tomeplug_eval.data import SyntheticDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from tune_vs_paper import build, compare  # noqa: E402


def test_tuned_schedule_is_compared_at_the_published_flops():
    torch.manual_seed(0)
    model = build("vit_l_layout", None)
    data = SyntheticDataset(count=2, size=96, seed=0)
    paper = [0, 4, 5, 10, 16, 17, 19, 20, 22, 23]
    row = compare(model, [data[0].image], [data[1].image], r=[0.5], blocks=[*paper, 1, 2])  # a small search
    assert row["paper_blocks"] == paper
    assert 0 < row["tuned_flops_ratio"] <= row["paper_flops_ratio"] < 1  # the target is the paper's FLOPs
    assert row["paper_loss"] > 0 and row["tuned_loss"] >= 0
    assert all(label == "tome r=0.5" for label in row["tuned_schedule"].values())
    assert tomeplug.active_patch(model) is None

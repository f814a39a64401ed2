"""Tuned vs published schedule at the published schedule's FLOPs: is the search at least as faithful?

For each seed: build the model (random weights), take the published ViT-L schedule (``layers="paper"``:
ToMe r = 0.5 in blocks 0, 4, 5, 10, 16, 17, 19, 20, 22, 23, attention scope) and its encoder FLOPs ratio f,
run ``tomeplug_eval.tune`` on calibration images with target ``flops=f`` (candidates: every block, ToMe at
r = 0.25 and 0.5, attention scope, the published method's space), and measure both schedules' fidelity
loss (``(1 - mask IoU) + (1 - embedding cosine)``, the model's own decoder on grid box prompts) on held-out
images. Generated shapes (``SyntheticDataset``) serve as images: with random weights the comparison is a
regression signal for the search, not a claim about real checkpoints.

The default model is ``vit_l_layout``: the tiny SAM of the tests with ViT-L's 24 blocks and global blocks
5, 11, 17, 23, so the published schedule applies; any harness model with a published schedule also works
(``--model sam_vit_l --checkpoint checkpoints/sam_vit_l_0b3195.pth --images DIR``: real weights and images,
the comparison a user with checkpoints runs).

    .venv/bin/python bench/tune_vs_paper.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

import tomeplug
from tomeplug_eval.architectures import tiny_sam
from tomeplug_eval.data import SyntheticDataset
from tomeplug_eval.model_catalog import RandomWeightsWarning, build_model
from tomeplug_eval.tune import tune
from tomeplug_eval.tune_cli import load_images
from tomeplug_eval.tune_measure import Measurer
from tomeplug_eval.tune_probe import make_probe


def build(name: str, checkpoint: str | None) -> torch.nn.Module:
    """The model: the ViT-L-layout tiny SAM, or a harness model (with its checkpoint, if given)."""
    if name == "vit_l_layout":
        return tiny_sam(depth=24, global_attn_indexes=(5, 11, 17, 23)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return build_model(name, checkpoint)


def compare(
    model: torch.nn.Module, calibration: list, held_out: list, r: list[float], blocks: list[int] | None = None
) -> dict:
    """One comparison (module docstring) on ``model``: both schedules' FLOPs ratios and held-out losses
    (``blocks``: the search's candidate blocks, default every block)."""
    with tomeplug.patch(model, "tome", layers="paper", r=0.5) as handle:
        paper = handle.to_dict()["layers"]
    held = Measurer(model, make_probe(model, held_out))
    published = held.measure(paper)
    schedule, report = tune(
        model, calibration, {"flops": published.flops_ratio}, r=r, blocks=blocks, validation_images=held_out
    )
    tuned = held.measure(schedule)
    return {
        "paper_blocks": sorted(paper),
        "paper_flops_ratio": published.flops_ratio,
        "paper_loss": published.loss,
        "tuned_schedule": {b: f"{s['strategy']} r={s['r']}" for b, s in schedule.items()},
        "tuned_flops_ratio": tuned.flops_ratio,
        "tuned_loss": tuned.loss,
        "tuned_calibration_loss": report.final.loss,
    }


def main() -> None:
    """Run the comparison per seed; print one line per seed and a summary (``--json`` appends the rows)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Method: this file's docstring.")
    parser.add_argument("--model", default="vit_l_layout", help="vit_l_layout (default) or a harness model")
    parser.add_argument("--checkpoint", help="the model's checkpoint (default: random weights)")
    parser.add_argument("--images", help="a folder of images (default: generated shapes)")
    parser.add_argument("--calibration", type=int, default=4, help="calibration images (default: %(default)s)")
    parser.add_argument("--held-out", type=int, default=8, help="held-out images (default: %(default)s)")
    parser.add_argument("--r", default="0.25,0.5", help="candidate merge fractions (default: %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of weights and images (default: 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="append every row as one JSON line to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        torch.manual_seed(seed)
        model = build(args.model, args.checkpoint)
        count = args.calibration + args.held_out
        if args.images:
            images = load_images(args.images, count)
        else:
            data = SyntheticDataset(count=count, size=256, seed=seed)
            images = [data[i].image for i in range(count)]
        row = {"model": args.model, "seed": seed}
        row |= compare(
            model, images[: args.calibration], images[args.calibration :], [float(r) for r in args.r.split(",")]
        )
        rows.append(row)
        print(
            f"seed {seed}: paper FLOPs {row['paper_flops_ratio']:.4f} loss {row['paper_loss']:.4f} | tuned FLOPs "
            f"{row['tuned_flops_ratio']:.4f} loss {row['tuned_loss']:.4f} ({len(row['tuned_schedule'])} blocks)"
        )
        if args.json:
            with args.json.open("a") as out:
                out.write(json.dumps(row) + "\n")
    better = sum(r["tuned_loss"] <= r["paper_loss"] for r in rows)
    print(f"tuned at least as faithful as the published schedule on held-out images in {better} of {len(rows)} seeds")


if __name__ == "__main__":
    main()

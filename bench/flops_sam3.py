"""fvcore GFLOPs of SAM 3's image encoder at its real 1008x1008 configuration, dense and merged (traces, not timings).

Run from the repository root (minutes on CPU: fvcore traces one full forward of the 32-block ViT per variant):

    .venv/bin/python bench/flops_sam3.py [--threads 1] [--r 0.5]

The ViT is sam3's own (``sam3.model_builder._create_vit_backbone``: 1008 px, patch 14, a 72x72 grid, width
1024, 16 heads, MLP ratio 4.625, 24x24 windows, global blocks 7, 15, 23, 31, RoPE), random weights (FLOPs do
not depend on them). Counted: SDPA, RoPE's complex products, linear, convolution and norms
(:mod:`tomeplug_eval.flops`). Variants: dense; ToMe at ``--r`` with scope ``attn`` on the 28 windowed blocks
(global blocks dense); scopes ``block`` and ``span`` on every block. The harness's encoder
(``model=sam3``) is the ViT with its two FPN necks (SAM 3's and the SAM 2-style one behind ``predict_inst``),
counted once here on the ViT's output and added in the last column.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import tomeplug
from tomeplug_eval.flops import count_flops

GLOBAL_BLOCKS = (7, 15, 23, 31)
WINDOWED_BLOCKS = [i for i in range(32) if i not in GLOBAL_BLOCKS]


class GivenFeatures(nn.Module):
    """A stand-in trunk for the necks: returns its input, a (B, 1024, 72, 72) ViT output, as the ViT's list."""

    channel_list = [1024]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x]``."""
        return [x]


def necks() -> nn.Module:
    """sam3's ``Sam3DualViTDetNeck`` (SAM 3's FPN and the SAM 2-style one) on a stand-in trunk."""
    import sam3.model_builder as builder
    from sam3.model.position_encoding import PositionEmbeddingSine

    position = PositionEmbeddingSine(num_pos_feats=256, normalize=True, temperature=10000)
    return builder._create_vit_neck(position, GivenFeatures(), enable_inst_interactivity=True).eval()


def main() -> None:
    """Count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--r", type=float, default=0.5, help="merge fraction (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import sam3.model_builder as builder

    torch.manual_seed(0)
    vit = builder._create_vit_backbone().eval()
    image = torch.randn(1, 3, 1008, 1008)
    neck_g = count_flops(necks(), torch.randn(1, 1024, 72, 72)).gflops
    variants = {
        "dense": None,
        f"tome r={args.r} attn, windowed blocks": dict(layers=WINDOWED_BLOCKS, scope="attn"),
        f"tome r={args.r} block, every block": dict(layers=None, scope="block"),
        f"tome r={args.r} span, every block": dict(layers=None, scope="span"),
    }
    print("| variant | ViT GFLOPs | FLOPs ratio | merge ovh. G | + necks GFLOPs | trace s |")
    print("| --- | --- | --- | --- | --- | --- |")
    dense = None
    for name, options in variants.items():
        handle = None if options is None else tomeplug.patch(vit, "tome", r=args.r, **options)
        start = time.perf_counter()
        report = count_flops(vit, image)
        seconds = time.perf_counter() - start
        if handle is not None:
            handle.remove()
        dense = dense or report.gflops
        print(
            f"| {name} | {report.gflops:.1f} | {report.gflops / dense:.3f} | {report.overhead_g:.3f} | "
            f"{report.gflops + neck_g:.1f} | {seconds:.0f} |",
            flush=True,
        )
    print(f"\nnecks (SAM 3 FPN + SAM 2-style FPN, dense in every variant): {neck_g:.1f} GFLOPs")


if __name__ == "__main__":
    main()

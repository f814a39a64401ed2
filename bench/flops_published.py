"""fvcore GFLOPs of published image encoders at 1024x1024, dense and merged, against the published numbers.

Run from the repository root (minutes on CPU: fvcore traces one full forward per variant):

    .venv/bin/python bench/flops_published.py --model sam_vit_l [--threads 2]
    .venv/bin/python bench/flops_published.py --model sam2.1_hiera_l

Weights are random (FLOPs do not depend on them). Variants: dense, and every listed strategy that is
registered at r=0.5 on the paper's schedule (``layers="paper"``). References:

- SAM ViT-L image encoder (PiToMe paper): dense 1493.85 G, ToMe 1332.6 G, PiToMe 1335.3 G.
- SAM 2.1 Hiera-L image encoder, trunk + neck: the published 810.5 G leaves out attention (fvcore skips
  ``aten::scaled_dot_product_attention`` without a handle); counted, dense is 912.0 G. The published ToMe
  schedule saved 22.3 G without attention, so ours must reach 912.0 - 22.3 = 889.7 G or less.

A dense count must lie within 1% of its reference, a merged one at or below it; the exit status says so.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import tomeplug
from tomeplug_eval.architectures import instantiate_sam2, sam2_config
from tomeplug_eval.flops import count_flops
from tomeplug_eval.model_catalog import RandomWeightsWarning, build_model


def vit_l_encoder() -> torch.nn.Module:
    """SAM ViT-L's image encoder, random weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return build_model("sam_vit_l").image_encoder


def hiera_l_encoder() -> torch.nn.Module:
    """SAM 2.1 Hiera-L's image encoder (trunk + FPN neck), random weights."""
    return instantiate_sam2(sam2_config("sam2.1/sam2.1_hiera_l.yaml").image_encoder)


MODELS = {
    "sam_vit_l": (vit_l_encoder, {"dense": 1493.85, "tome": 1332.6, "pitome": 1335.3}),
    "sam2.1_hiera_l": (hiera_l_encoder, {"dense": 912.0, "tome": 889.7}),
}


def main() -> None:
    """Count and print the table; exits non-zero if a count misses its reference."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", choices=list(MODELS), default="sam_vit_l", help="harness model name (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    build, published = MODELS[args.model]
    encoder = build().eval()
    x = torch.randn(1, 3, 1024, 1024)
    strategies = [s for s in published if s != "dense" and s in tomeplug.list_strategies()]
    print(f"model: {args.model} image encoder at 1024x1024; strategies: {', '.join(strategies)}")
    print(f"{'variant':<10} {'GFLOPs':>9} {'published':>10} {'ratio':>6} {'check':<6} {'overhead G el.':>14} {'s':>5}")
    failed = False
    dense_total = None
    for variant in ["dense", *strategies]:
        start = time.perf_counter()
        if variant == "dense":
            report = count_flops(encoder, x)
            dense_total = report.total
        else:
            with tomeplug.patch(encoder, variant, layers="paper", r=0.5) as handle:
                schedule = list(handle.schedule)
                report = count_flops(encoder, x)
        reference = published[variant]
        ok = abs(report.gflops - reference) / reference < 0.01 if variant == "dense" else report.gflops <= reference
        failed |= not ok
        print(
            f"{variant:<10} {report.gflops:>9.2f} {reference:>10.2f} {report.total / dense_total:>6.3f} "
            f"{'ok' if ok else 'FAIL':<6} {report.overhead_g:>14.3f} {time.perf_counter() - start:>5.0f}"
        )
    print(f"schedule: blocks {schedule}, r=0.5; dense must be within 1% of the reference, merged at or below it")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()

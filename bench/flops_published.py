"""fvcore GFLOPs of SAM ViT-L's image encoder at 1024x1024, dense and merged, against the published numbers.

Run from the repository root (a few minutes on CPU: fvcore traces one full ViT-L forward per variant):

    .venv/bin/python bench/flops_published.py [--threads 2]

Weights are random (FLOPs do not depend on them). Variants: dense; ``tome`` and, if registered, ``pitome``
at r=0.5 on the paper's schedule [0, 4, 5, 10, 16, 17, 19, 20, 22, 23]. Published reference (PiToMe paper,
SAM ViT-L): dense 1493.85 G, ToMe 1332.6 G, PiToMe 1335.3 G; a merged count must not exceed its reference.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import tomeplug
from tomeplug_eval.flops import count_flops
from tomeplug_eval.sam_models import RandomWeightsWarning, build_model

SCHEDULE = [0, 4, 5, 10, 16, 17, 19, 20, 22, 23]
PUBLISHED_G = {"dense": 1493.85, "tome": 1332.6, "pitome": 1335.3}


def main() -> None:
    """Count and print the table; exits non-zero if a merged variant exceeds its published GFLOPs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        encoder = build_model("vit_l").image_encoder
    x = torch.randn(1, 3, 1024, 1024)
    strategies = [s for s in ("tome", "pitome") if s in tomeplug.list_strategies()]
    if "pitome" not in strategies:
        print(f"pitome is not registered (installed: {', '.join(tomeplug.list_strategies())}); skipped")
    print(f"{'variant':<10} {'GFLOPs':>9} {'published':>10} {'ratio':>6} {'check':<6} {'overhead G el.':>14} {'s':>5}")
    failed = False
    dense_total = None
    for variant in ["dense", *strategies]:
        start = time.perf_counter()
        if variant == "dense":
            report = count_flops(encoder, x)
            dense_total = report.total
        else:
            with tomeplug.patch(encoder, variant, SCHEDULE, r=0.5):
                report = count_flops(encoder, x)
        reference = PUBLISHED_G[variant]
        ok = abs(report.gflops - reference) / reference < 0.01 if variant == "dense" else report.gflops <= reference
        failed |= not ok
        print(
            f"{variant:<10} {report.gflops:>9.2f} {reference:>10.2f} {report.total / dense_total:>6.3f} "
            f"{'ok' if ok else 'FAIL':<6} {report.overhead_g:>14.3f} {time.perf_counter() - start:>5.0f}"
        )
    print(f"schedule: blocks {SCHEDULE}, r=0.5; dense must be within 1% of the reference, merged at or below it")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()

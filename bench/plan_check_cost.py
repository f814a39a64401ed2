"""The cost of validating every merge plan (``tomeplug.plan_validation.validate_plan``) in ViT-L-sized merged blocks.

Run from the repository root, e.g.

    .venv/bin/python bench/plan_check_cost.py --repeats 7

Two SAM ViT-L blocks (1024 wide, 16 heads, relative positions, 64x64 token grid): a windowed one (14x14
windows, the grid zero-padded to 70x70: 25 attention calls of 196 tokens) and a global one (one call of
4096 tokens), patched with ``tome`` at r = 0.5 (scope ``attn``). Per block, on the same input:

- interleaved: the block's forward with the check and without it (``tomeplug.metric.validate_plan``
  replaced by the identity), timed by ``latency.compare`` (ABBA rounds, medians); ratio = checked /
  unchecked median (and the ratio of the minima, the least disturbed calls). On a shared machine these
  ratios carry the machine's noise, which can exceed the check's cost by orders of magnitude;
- direct: the check alone on that block's real plan, the median of ``--check-calls`` calls, as a share
  of the unchecked block's median: the precise number for the 1% budget.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from contextlib import contextmanager
from unittest import mock

import torch

import tomeplug
import tomeplug.metric
from tomeplug.plan_validation import validate_plan
from tomeplug.torchvision_compat import ensure_torchvision
from tomeplug_eval.latency import compare

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def vit_l_blocks() -> torch.nn.Module:
    """A 2-block SAM ViT-L image encoder at 1024x1024: block 0 windowed (14x14), block 1 global."""
    ensure_torchvision()  # segment_anything imports torchvision
    from segment_anything.modeling import ImageEncoderViT

    encoder = ImageEncoderViT(
        img_size=1024,
        embed_dim=1024,
        depth=2,
        num_heads=16,
        qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=(1,),
        out_chans=256,
    )
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_(0, 0.02)
    return encoder.eval()


@contextmanager
def unchecked():
    """Plans are used as the strategy returns them (the check replaced by the identity)."""
    with mock.patch.object(tomeplug.metric, "validate_plan", lambda plan, metric, strategy: plan):
        yield


def captured_plan(block: torch.nn.Module, x: torch.Tensor) -> tuple:
    """The (plan, metric, config) of the block's last planned attention call."""
    seen = []

    def keep(plan, metric, strategy):
        seen.append((plan, metric, strategy))
        return plan

    with mock.patch.object(tomeplug.metric, "validate_plan", keep), torch.no_grad():
        block(x)
    return seen[-1]


def median_seconds(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per block")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--check-calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    encoder = vit_l_blocks()
    tomeplug.patch(encoder, "tome", r=0.5)
    encoder = encoder.to(dtype)
    x = torch.randn(1, 64, 64, 1024, generator=torch.Generator().manual_seed(0)).to(dtype)  # (B, H, W, C)
    results = []
    for label, block in (("windowed 14x14 (25 calls of 196)", encoder.blocks[0]), ("global 64x64", encoder.blocks[1])):

        def checked(block=block):
            with torch.no_grad():
                return block(x)

        def plain(block=block):
            with torch.no_grad(), unchecked():
                return block(x)

        timing = compare({"unchecked": plain, "checked": checked}, warmup=args.warmup, repeats=args.repeats)
        last = timing["last"]
        assert torch.equal(last["checked"], last["unchecked"]), "the check changed the block's output"
        plan, metric, config = captured_plan(block, x)
        check_s = median_seconds(functools.partial(validate_plan, plan, metric, config), args.check_calls)
        block_s = timing["median_s"]["unchecked"]
        results.append(
            {
                "block": label,
                "plan": {"groups": metric.shape[0], "tokens": metric.shape[1], "slots": plan.num_merged},
                "unchecked_s": block_s,
                "checked_s": timing["median_s"]["checked"],
                "ratio_checked_over_unchecked": timing["median_s"]["checked"] / block_s,
                "ratio_of_minima": min(timing["all_s"]["checked"]) / min(timing["all_s"]["unchecked"]),
                "all_s": timing["all_s"],
                "check_s": check_s,
                "check_share": check_s / block_s,
            }
        )
    record = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        **vars(args),
        "blocks": results,
    }
    print(json.dumps(record, indent=1))
    for r in results:
        print(
            f"{r['block']}: block {r['unchecked_s'] * 1e3:.1f} ms unchecked, {r['checked_s'] * 1e3:.1f} ms checked "
            f"(ratio {r['ratio_checked_over_unchecked']:.4f}, of minima {r['ratio_of_minima']:.4f}); "
            f"the check alone {r['check_s'] * 1e6:.0f} us = "
            f"{100 * r['check_share']:.3f}% of the block"
        )


if __name__ == "__main__":
    main()

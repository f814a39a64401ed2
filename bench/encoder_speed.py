"""SAM / SAM 2 image-encoder speed, patched vs unpatched in one process: speedup, FLOPs bound, merge overhead.

Run from the repository root (random weights: the work does not depend on them), e.g.

    .venv/bin/python bench/encoder_speed.py --model vit_l --scope attn --repeats 3

Method:

- speed: two copies of one encoder at 1024x1024, the second patched, timed by ``latency.compare``:
  interleaved rounds (ABBA...), ``--warmup`` untimed rounds first, medians of ``--repeats``;
  speedup = dense median / patched median (also shown: the ratio of the minima, the least disturbed
  calls, for machines shared with other jobs).
- FLOPs bound: fvcore multiply-adds (``tomeplug_eval.flops``) dense / patched at batch 1, the speedup a
  machine whose time is proportional to FLOPs would see. Counts are cached in outputs/ by schedule.
- merge overhead: ``--overhead-runs`` more, instrumented, eager patched forwards. Where the adapter
  calls them, ``plan_merge`` (metric, similarity, matching), ``MergePlan.merge`` (index-add) and
  ``MergePlan.unmerge`` (index-select) are timed, and so is every merged block (a patched block's
  forward, or a span's run); each label keeps its least-disturbed (minimum) total over the runs, and
  overhead = (plan + merge + unmerge) / merged blocks' time. Building the merged tokens'
  relative-position bias ("positions") is shown apart: it replaces upstream's own rel-pos work.
- fidelity: cosine of the patched and dense embeddings of the timed runs (random weights: a smoke check).

``--model`` is ``vit_b``, ``vit_l`` (SAM), ``hiera_l`` (SAM 2.1 Hiera-L) or a tiny smoke model. ``--layers``
is ``paper`` (the published schedule, default for ViT-L: [0, 4, 5, 10, 16, 17, 19, 20, 22, 23], and
Hiera-L: [31, 32, 34, 35, 37, 38, 44, 45, 46, 47]), ``vitb`` (ViT-B's default: the paper schedule at
half depth, floor(i / 2) deduplicated: [0, 2, 5, 8, 9, 10, 11], all four global blocks included),
``all``, ``windowed`` or indices ``0,4,5``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import platform
import time
import warnings
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import tomeplug
import tomeplug.matching
import tomeplug.plan
from tomeplug.plan import MergePlan
from tomeplug_adapters import (
    sam2_hiera_attention,
    sam2_hiera_scopes,
    sam_vit_attention,
    sam_vit_scopes,
    windowed_scopes,
)
from tomeplug_eval.flops import count_flops
from tomeplug_eval.latency import compare
from tomeplug_eval.model_catalog import RandomWeightsWarning, build_model

VIT_B_SCHEDULE = [0, 2, 5, 8, 9, 10, 11]
MODELS = {"vit_b": "vit_b", "vit_l": "vit_l", "hiera_l": "sam2.1_hiera_l", "tiny": "tiny", "tiny_hiera": "sam2_tiny"}
"""``--model`` -> the harness's model name (``tomeplug_eval.model_catalog``); the tiny ones are smoke runs."""
DEFAULT_LAYERS = {"vit_l": "paper", "vit_b": "vitb", "hiera_l": "paper", "tiny": "all", "tiny_hiera": "all"}
MERGING_CODE = [sam_vit_attention, sam_vit_scopes, sam2_hiera_attention, sam2_hiera_scopes, windowed_scopes]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CACHE = Path("outputs/bench_flops_cache.json")


def encoder_blocks(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The encoder's blocks, as its adapter lists them."""
    return list(tomeplug.get_registry().adapter_for(encoder).blocks(encoder))


def parse_layers(text: str, encoder: torch.nn.Module) -> list[int] | str | None:
    """``--layers`` as ``tomeplug.patch`` takes it."""
    if text == "all":
        return None
    if text == "windowed":
        return [i for i, block in enumerate(encoder_blocks(encoder)) if block.window_size > 0]
    if text == "vitb":
        return VIT_B_SCHEDULE
    return text if text == "paper" else [int(i) for i in text.split(",")]


def code_version() -> str:
    """A hash of the merging code's sources: cached FLOPs are reused only while that code is unchanged."""
    import hashlib

    sources = [module.__file__ for module in MERGING_CODE] + [tomeplug.plan.__file__, tomeplug.matching.__file__]
    return hashlib.sha256(b"".join(Path(f).read_bytes() for f in sources)).hexdigest()[:16]


def gflops(encoder: torch.nn.Module, key: dict, size: int) -> float:
    """fvcore GFLOPs of one 1 x 3 x size x size forward, cached by ``key``."""
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    name = json.dumps({**key, "code": code_version()}, sort_keys=True)
    if name not in cache:
        cache[name] = count_flops(encoder, torch.randn(1, 3, size, size)).gflops
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=1))
    return cache[name]


class Stopwatch:
    """Seconds spent per label; nested calls of an ``outer`` label count once (the outermost)."""

    def __init__(self, device: torch.device):
        self.seconds, self.depth, self.device = Counter(), 0, device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, label: str, fn, outer: bool = False):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.depth += outer
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= outer
                if not outer or self.depth == 0:
                    self.seconds[label] += self.now() - start

        return timed


def merge_overhead(encoder: torch.nn.Module, schedule: dict, x: torch.Tensor) -> Counter:
    """Seconds in planning, merging, unmerging, positions and merged blocks during one forward."""
    watch = Stopwatch(x.device)
    with ExitStack() as stack, torch.no_grad():
        for module in (sam_vit_attention, sam2_hiera_attention, windowed_scopes):
            stack.enter_context(mock.patch.object(module, "plan_merge", watch.wrap("plan", module.plan_merge)))
        for module in (sam_vit_attention, sam_vit_scopes):
            positions = watch.wrap("positions", module.plan_positions)
            stack.enter_context(mock.patch.object(module, "plan_positions", positions))
        bias = watch.wrap("positions", sam_vit_attention.position_bias)
        stack.enter_context(mock.patch.object(sam_vit_attention, "position_bias", bias))
        for name in ("merge", "unmerge"):
            stack.enter_context(mock.patch.object(MergePlan, name, watch.wrap(name, getattr(MergePlan, name))))
        run = watch.wrap("blocks", windowed_scopes.run_merged, outer=True)
        stack.enter_context(mock.patch.object(windowed_scopes, "run_merged", run))
        blocks = encoder_blocks(encoder)
        for index in schedule:
            block = blocks[index]
            stack.enter_context(mock.patch.object(block, "forward", watch.wrap("blocks", block.forward, outer=True)))
        encoder(x)
    return watch.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="vit_l", help="hiera_l: SAM 2.1; tiny*: smoke runs")
    parser.add_argument("--strategy", default="tome")
    layers_help = "paper | vitb | all | windowed | 0,4,5 (default: vitb for vit_b, all for tiny*, else paper)"
    parser.add_argument("--layers", default=None, help=layers_help)
    parser.add_argument("--r", type=float, default=0.5)
    parser.add_argument("--scope", choices=["attn", "block", "span"], default="attn")
    parser.add_argument("--exclude-padding", action="store_true")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=None, help="input side (default 1024; tiny: 256)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both encoders (inductor)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--overhead-runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    args.size = args.size or {"tiny": 256, "tiny_hiera": 128}.get(args.model, 1024)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        dense = build_model(MODELS[args.model]).image_encoder
    layers = parse_layers(args.layers or DEFAULT_LAYERS[args.model], dense)
    patched = copy.deepcopy(dense)
    params = {"r": args.r, "scope": args.scope, **({"exclude_padding": True} if args.exclude_padding else {})}
    handle = tomeplug.patch(patched, args.strategy, layers, **params)
    record = {"model": args.model, "size": args.size, "schedule": handle.to_dict()}
    bound = gflops(dense, {"model": args.model, "size": args.size}, args.size)
    merged_g = gflops(patched, record, args.size)

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    dense, patched = dense.to(device, dtype), patched.to(device, dtype)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    x = x.to(device, dtype)
    run_dense, run_patched = dense, patched
    if args.compile:
        run_dense, run_patched = torch.compile(dense), torch.compile(patched, fullgraph=True)

    def forward(model):
        with torch.no_grad():
            out = model(x)
        return out["vision_features"] if isinstance(out, dict) else out  # SAM 2's ImageEncoder: a dict

    timing = compare(
        {"dense": functools.partial(forward, run_dense), "patched": functools.partial(forward, run_patched)},
        warmup=args.warmup,
        repeats=args.repeats,
    )
    last = timing["last"]
    fidelity = F.cosine_similarity(last["dense"].float().flatten(1), last["patched"].float().flatten(1)).min().item()
    runs = [merge_overhead(patched, handle.schedule, x) for _ in range(args.overhead_runs)]
    seconds = Counter({label: min(run[label] for run in runs) for label in runs[0]})
    overhead = (seconds["plan"] + seconds["merge"] + seconds["unmerge"]) / seconds["blocks"]

    speedup = timing["speedup"]["patched"]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        **{k: v for k, v in vars(args).items() if k != "json"},
        "layers": sorted(handle.schedule),
        "dense_s": timing["median_s"]["dense"],
        "patched_s": timing["median_s"]["patched"],
        "all_s": timing["all_s"],
        "speedup": speedup,
        "speedup_min": min(timing["all_s"]["dense"]) / min(timing["all_s"]["patched"]),
        "dense_gflops": bound,
        "patched_gflops": merged_g,
        "flops_bound": bound / merged_g,
        "speedup_over_bound": speedup / (bound / merged_g),
        "merge_overhead": overhead,
        "instrumented_s": dict(seconds),
        "cosine": fidelity,
    }
    print(json.dumps(result, indent=1))
    print(
        f"\n{args.model} {args.scope} {args.strategy} r={args.r} blocks {result['layers']}: "
        f"dense {result['dense_s']:.2f} s, patched {result['patched_s']:.2f} s, speedup {speedup:.3f}x "
        f"(of minima {result['speedup_min']:.3f}x); "
        f"FLOPs {bound:.1f} -> {merged_g:.1f} G, bound {bound / merged_g:.3f}x "
        f"({100 * speedup / (bound / merged_g):.0f}% of it); merge overhead {100 * overhead:.1f}% of merged blocks "
        f"(positions {100 * seconds['positions'] / seconds['blocks']:.1f}%); cosine {fidelity:.4f}"
    )
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

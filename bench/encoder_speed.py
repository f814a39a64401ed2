"""SAM / SAM 2 image-encoder speed, patched vs unpatched in one process: speedup, FLOPs bound, merge overhead.

Run from the repository root (random weights: the work does not depend on them), e.g.

    .venv/bin/python bench/encoder_speed.py --model sam_vit_l --scope attn --repeats 3

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
- peak memory: one more forward of each encoder under ``tomeplug_eval.memory.PeakMemory``: the memory the
  forward adds (CUDA: max allocated; CPU: sampled resident set growth). On CPU (eager baselines) one more
  under ``tomeplug_eval.memory.LiveTensorPeak``: the peak of the tensors the forward allocates, deterministic
  (no allocator retention, no sampling), and the largest tensors alive at it (``*_live_peak`` in the JSON).
- baselines (``--baseline``): ``eager`` runs upstream's attention in every unmerged block, ``sdpa`` the same
  attention as one SDPA call (``bench/sdpa_attention.py``; SAM ViT only, the others use SDPA already), and
  ``compile`` the SDPA form with both encoders under ``torch.compile`` (inductor; the patched one
  ``fullgraph=True``).

``--model`` is any of the harness's models (``model=`` in ``eval/harness.py``): ``sam_vit_b``, ``sam_vit_l``,
``sam2.1_hiera_l``, ``sam3`` (its ViT alone, built by sam3's own builder at 1008x1008), the transformers and
Ultralytics models (``hf_sam_vit_l``, ``ultralytics_sam2.1_hiera_l``, ...: their vision / image encoder), or a
tiny smoke model (``sam_tiny``, ``sam2_tiny``, ``sam3_tiny``, ``hf_sam_tiny``, ...). ``--layers`` is ``paper``
(the published schedule, default for SAM / HQ-SAM ViT-L: [0, 4, 5, 10, 16, 17, 19, 20, 22, 23], and SAM
2.1 Hiera-L: [31, 32, 34, 35, 37, 38, 44, 45, 46, 47]), ``vitb`` (default for ViT-B: the paper schedule at
half depth, floor(i / 2) deduplicated: [0, 2, 5, 8, 9, 10, 11], all four global blocks included),
``all`` (default for every other model), ``windowed`` or indices ``0,4,5``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import platform
import sys
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
    sam3_vit,
    sam3_vit_attention,
    sam_vit_attention,
    sam_vit_scopes,
    windowed_scopes,
)
from tomeplug_eval import architectures
from tomeplug_eval.flops import count_flops
from tomeplug_eval.latency import compare
from tomeplug_eval.memory import LiveTensorPeak, PeakMemory
from tomeplug_eval.model_catalog import ALIASES, MODELS, RandomWeightsWarning, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/'s own modules, however this file is loaded
from sdpa_attention import use_sdpa  # noqa: E402

VIT_B_SCHEDULE = [0, 2, 5, 8, 9, 10, 11]
_PAPER = ["sam_vit_l", "hq_sam_vit_l", "sam2.1_hiera_l", "hf_sam_vit_l", "hf_sam_hq_vit_l", "hf_sam2.1_hiera_l"]
_PAPER += ["ultralytics_sam_vit_l", "ultralytics_sam2.1_hiera_l"]
_VITB = ["sam_vit_b", "hq_sam_vit_b", "hf_sam_vit_b", "hf_sam_hq_vit_b", "ultralytics_sam_vit_b"]
DEFAULT_LAYERS = {**dict.fromkeys(_PAPER, "paper"), **dict.fromkeys(_VITB, "vitb")}
"""``--layers`` default per ``--model`` (``all`` for the others)."""
SMALL_INPUTS = {"sam_tiny": 256, "hq_sam_tiny": 256, "sam2_tiny": 128, "sam3": 1008, "sam3_tiny": 140}
SMALL_INPUTS |= {"hf_sam_tiny": 256, "hf_sam_hq_tiny": 256, "hf_sam2_tiny": 128, "hf_sam3": 1008, "hf_sam3_tiny": 140}
"""``--size`` default of the tiny smoke models and SAM 3 (1024 for the others)."""
SAM3_ENCODERS = {"sam3": lambda: architectures.sam3_image_vit(), "sam3_tiny": architectures.tiny_sam3_vit}
"""SAM 3's image encoder timed here: its ViT alone, built as sam3's builder builds it (no whole model needed)."""
MERGING_CODE = [
    sam_vit_attention, sam_vit_scopes, sam2_hiera_attention, sam2_hiera_scopes, windowed_scopes, sam3_vit,
    sam3_vit_attention,
]  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CACHE = Path("outputs/bench_flops_cache.json")


def build_encoder(model: str) -> torch.nn.Module:
    """The image encoder of harness model ``model`` (random weights, eval mode): SAM 3's ViT alone, else the
    model's ``image_encoder`` (transformers: ``vision_encoder``)."""
    if model in SAM3_ENCODERS:
        return SAM3_ENCODERS[model]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        built = build_model(model)
    return getattr(built, "image_encoder", None) or built.vision_encoder


def embedding(out) -> torch.Tensor:
    """The image embedding in an encoder's output."""
    if isinstance(out, list):  # SAM 3's ViT: a list of (B, C, h, w) maps
        return out[-1]
    if hasattr(out, "last_hidden_state"):  # transformers' vision encoders: an output dataclass
        return out.last_hidden_state
    return out["vision_features"] if isinstance(out, dict) else out  # SAM 2's ImageEncoder: a dict


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


def gflops(encoder: torch.nn.Module, key: dict, size: int, count: bool = True) -> float | None:
    """fvcore GFLOPs of one 1 x 3 x size x size forward (on the encoder's device and dtype), cached by ``key``;
    None if not cached and not ``count``."""
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    name = json.dumps({**key, "code": code_version()}, sort_keys=True)
    if name not in cache and not count:
        return None
    if name not in cache:
        weight = next(encoder.parameters())
        x = torch.randn(1, 3, size, size).to(weight.device, weight.dtype)
        cache[name] = count_flops(encoder, x).gflops
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=1))
    return cache[name]


def cast(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` on ``device`` with its floating-point tensors in ``dtype``; complex buffers (SAM 3's RoPE
    table ``freqs_cis``) keep theirs, which ``Module.to(dtype)`` would cast to real, dropping the rotation."""
    return module._apply(lambda t: t.to(device, dtype) if t.is_floating_point() else t.to(device))


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
        for module in (sam_vit_attention, sam_vit_scopes, sam3_vit_attention):
            positions = watch.wrap("positions", module.plan_positions)
            stack.enter_context(mock.patch.object(module, "plan_positions", positions))
        for module in (sam_vit_attention, sam3_vit_attention):
            bias = watch.wrap("positions", module.position_bias)
            stack.enter_context(mock.patch.object(module, "position_bias", bias))
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


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option says what it does (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Method: this file's docstring.")
    add = parser.add_argument
    add(
        "--model",
        type=lambda name: ALIASES.get(name, name),
        choices=list(MODELS),
        default="sam_vit_l",
        metavar="MODEL",
        help=f"a harness model (model= of eval/harness.py), random weights: {', '.join(MODELS)} (default: %(default)s)",
    )
    add("--strategy", default="tome", help="registered strategy (python -m tomeplug list; default: %(default)s)")
    add(
        "--layers",
        help="paper | vitb | all | windowed | 0,4,5 (default: paper for the ViT-L models and "
        "sam2.1_hiera_l, vitb for the ViT-B ones, else all)",
    )
    add("--r", type=float, default=0.5, help="merge fraction of each attention call's tokens (default: %(default)s)")
    add(
        "--scope",
        choices=["attn", "block", "span"],
        default="attn",
        help="how much runs on merged tokens (default: %(default)s)",
    )
    add("--exclude-padding", action="store_true", help="edge windows' padding tokens merge only among themselves")
    add("--dtype", choices=list(DTYPES), default="fp32", help="precision of both encoders (default: %(default)s)")
    add("--device", choices=["cpu", "cuda"], default="cpu", help="where both encoders run (default: %(default)s)")
    add("--batch", type=int, default=1, help="images per timed forward (default: %(default)s)")
    add(
        "--size",
        type=int,
        help="input side in pixels (default: 1024; sam3 1008; sam_tiny, hq_sam_tiny 256; sam2_tiny 128; sam3_tiny 140)",
    )
    add(
        "--baseline",
        choices=["eager", "sdpa", "compile"],
        default="eager",
        help="the dense attention both encoders' unmerged blocks run: upstream's (eager), SDPA with SAM's "
        "relative positions as a mask (sdpa; SAM 2, SAM 3 and transformers' models use SDPA already), or sdpa "
        "and torch.compile (inductor) of both encoders (compile) (default: %(default)s)",
    )
    add("--repeats", type=int, default=3, help="timed rounds per encoder, medians reported (default: %(default)s)")
    add("--warmup", type=int, default=1, help="untimed rounds per encoder first (default: %(default)s)")
    add(
        "--overhead-runs",
        type=int,
        default=2,
        help="instrumented patched forwards that time the merge overhead (default: %(default)s)",
    )
    add("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    add("--json", type=Path, help="append the result as one JSON line to this file")
    return parser


def main() -> None:
    """Time the dense and the patched encoder; print the result (and append it to ``--json``)."""
    args = build_parser().parse_args()
    args.size = args.size or SMALL_INPUTS.get(args.model, 1024)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = build_encoder(args.model)
    layers = parse_layers(args.layers or DEFAULT_LAYERS.get(args.model, "all"), dense)
    patched = copy.deepcopy(dense)
    params = {"r": args.r, "scope": args.scope, **({"exclude_padding": True} if args.exclude_padding else {})}
    handle = tomeplug.patch(patched, args.strategy, layers, **params)
    record = {"model": args.model, "size": args.size, "schedule": handle.to_dict()}
    bound = gflops(dense, {"model": args.model, "size": args.size}, args.size)
    merged_g = gflops(patched, record, args.size)

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    dense, patched = cast(dense, device, dtype), cast(patched, device, dtype)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    x = x.to(device, dtype)
    sdpa_swapped = use_sdpa(dense) + use_sdpa(patched) if args.baseline != "eager" else 0
    run_dense, run_patched = dense, patched
    if args.baseline == "compile":
        run_dense, run_patched = torch.compile(dense), torch.compile(patched, fullgraph=True)

    def forward(model):
        with torch.no_grad():
            return embedding(model(x))

    timing = compare(
        {"dense": functools.partial(forward, run_dense), "patched": functools.partial(forward, run_patched)},
        warmup=args.warmup,
        repeats=args.repeats,
    )
    last = timing["last"]
    fidelity = F.cosine_similarity(last["dense"].float().flatten(1), last["patched"].float().flatten(1)).min().item()
    peak_mb, live = {}, {}
    for name, model in (("dense", run_dense), ("patched", run_patched)):
        with PeakMemory(device) as meter:
            forward(model)
        peak_mb[name] = meter.peak_mb
        if device.type == "cpu" and args.baseline != "compile":  # the eager forward's own tensors
            with LiveTensorPeak() as live[name]:
                forward(model)
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
        "sdpa_swapped": sdpa_swapped,
        "dense_peak_mb": peak_mb["dense"],
        "patched_peak_mb": peak_mb["patched"],
        **{f"{name}_live_peak_mb": meter.peak_mb for name, meter in live.items()},
        **{f"{name}_live_peak": meter.report().splitlines() for name, meter in live.items()},
        "instrumented_s": dict(seconds),
        "cosine": fidelity,
    }
    print(json.dumps(result, indent=1))
    print(
        f"\n{args.model} {args.scope} {args.strategy} r={args.r} ({args.baseline}) blocks {result['layers']}: "
        f"dense {result['dense_s']:.2f} s, patched {result['patched_s']:.2f} s, speedup {speedup:.3f}x "
        f"(of minima {result['speedup_min']:.3f}x); "
        f"FLOPs {bound:.1f} -> {merged_g:.1f} G, bound {bound / merged_g:.3f}x "
        f"({100 * speedup / (bound / merged_g):.0f}% of it); merge overhead {100 * overhead:.1f}% of merged blocks "
        f"(positions {100 * seconds['positions'] / seconds['blocks']:.1f}%); cosine {fidelity:.4f}; "
        f"peak memory dense {peak_mb['dense']:.0f} MiB, patched {peak_mb['patched']:.0f} MiB"
        + (f" (live tensors {live['dense'].peak_mb:.0f} -> {live['patched'].peak_mb:.0f} MiB)" if live else "")
    )
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

"""The GPU table of issue 18: dense vs merged image encoders against eager, SDPA and compiled dense baselines.

``bench/gpu.sh`` runs it on a GPU machine (SAM ViT-L, SAM 2.1 Hiera-L and SAM 3 at 1024² / 1008², bf16, batch
1 and 8) within about 8 minutes on one H200; ``--device cpu`` with the tiny models checks it anywhere, e.g.

    python bench/gpu_table.py --device cpu --models sam_tiny,sam2_tiny,sam3_tiny --repeats 1 --warmup 0

Method (the helpers are ``bench/encoder_speed.py``'s; random weights, the work does not depend on them):

- every model is built once; three patched copies (``tome``, r = ``--r``): scope ``attn`` on the model's
  published schedule (``encoder_speed.DEFAULT_LAYERS``; the windowed blocks where it has none, as SAM 3's
  table in bench/RESULTS.md), ``block`` and ``span`` on every block;
- FLOPs bound: fvcore counts at batch 1, once per (model, scope), on the device, cached with
  ``encoder_speed.py``'s counts (``--no-count-flops``: the cache only, the bound left empty where it has none);
- baselines, in this order so that the cheap rows come first: ``eager`` (upstream's attention in every
  unmerged block), ``sdpa`` (SAM ViT's attention as one SDPA call, ``bench/sdpa_attention.py``), then
  ``compile``: the SDPA forms under ``torch.compile`` (inductor, ``dynamic=False``, the merged encoder
  ``fullgraph=True``) for the ``--compile-scopes`` only (default ``span``: an inductor compile of a large
  encoder takes about a minute, so attn / block compiled rows do not fit the budget), one compile per
  (model, batch) after ``torch._dynamo.reset()``, its time (the first call) in ``compile_s``;
- timing: ``tomeplug_eval.latency.compare`` per (model, baseline, batch): the dense encoder and the merged
  ones interleaved (ABBA...), ``--warmup`` untimed rounds, medians of ``--repeats`` (CUDA synchronised);
  peak memory: one more forward of each under ``tomeplug_eval.memory.PeakMemory`` (CUDA: max allocated);
- budget: a compiled row group is skipped, and recorded as skipped, when ``--budget-s`` would run out
  before its compile (estimated by the slowest compile so far, else 90 s); a failing row group (e.g. out of
  memory) is recorded with its error and the run goes on;
- ``--profile``: torch.profiler's top ops of one dense and one span forward (sdpa baseline, largest batch)
  per model, written next to ``--out``.

Each row is one JSON line in ``--out``; a markdown table is printed at the end.
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
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from encoder_speed import DEFAULT_LAYERS, DTYPES, SMALL_INPUTS, build_encoder, cast, embedding, gflops, parse_layers
from sdpa_attention import use_sdpa  # bench/, the script's folder

import tomeplug
import tomeplug_adapters
import tomeplug_strategies
from tomeplug_eval.latency import compare
from tomeplug_eval.memory import PeakMemory

SCOPES = ("attn", "block", "span")
COMPILE_GUESS_S = 90.0
"""Seconds one (model, batch) compile is assumed to take until one has been measured."""


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option says what it does (``--help``)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Method: this file's docstring; bench/RESULTS.md has the table.",
        epilog="GPU machine: bash bench/gpu_site.sh here once, then bash bench/gpu.sh there (this script with the "
        "issue's settings and --profile, about 8 minutes on one H200). Smoke run anywhere: bash bench/gpu.sh "
        "--device cpu --models sam_tiny,sam2_tiny,sam3_tiny --repeats 1 --warmup 0",
    )
    add = parser.add_argument
    add("--models", default="sam_vit_l,sam2.1_hiera_l,sam3", help="comma-separated models (default: %(default)s)")
    add("--size", type=int, help="input side (default: 1024; sam3 1008; the tiny models' own)")
    add("--batches", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    add("--dtype", choices=list(DTYPES), default="bf16", help="precision of every encoder (default: %(default)s)")
    add("--device", choices=["cuda", "cpu"], default="cuda", help="where the encoders run (default: %(default)s)")
    add("--r", type=float, default=0.5, help="ToMe merge fraction (default: %(default)s)")
    add(
        "--baselines",
        default="eager,sdpa,compile",
        help="comma-separated, run in this order: eager, sdpa, compile (default: %(default)s)",
    )
    add(
        "--compile-scopes",
        default="span",
        help="scopes timed under compile; each (model, batch) compiles anew, about a minute for a large encoder, so "
        "attn and block do not fit the 8 minutes (default: %(default)s)",
    )
    add("--compile-backend", default="inductor", help="torch.compile backend (default: %(default)s)")
    add("--repeats", type=int, default=5, help="timed rounds per encoder, medians reported (default: %(default)s)")
    add("--warmup", type=int, default=2, help="untimed rounds per encoder first (default: %(default)s)")
    add(
        "--budget-s",
        type=float,
        default=420,
        help="skip compiled rows that would end after this (default: %(default)s)",
    )
    add("--no-count-flops", action="store_true", help="FLOPs bounds from the cache only, never counted")
    add("--profile", action="store_true", help="torch.profiler top ops of a dense and a span forward per model")
    add("--out", type=Path, default=Path("outputs/bench/gpu.jsonl"), help="JSON lines (default: %(default)s)")
    return parser


class Prepared:
    """One model's dense encoder and its merged copies on the device, with their FLOPs bounds."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device):
        self.name, self.size = name, args.size or SMALL_INPUTS.get(name, 1024)
        torch.manual_seed(0)
        dense = build_encoder(name)
        self.encoders, self.layers = {"dense": dense}, {}
        for scope in SCOPES:
            text = DEFAULT_LAYERS.get(name, "windowed") if scope == "attn" else "all"
            patched = copy.deepcopy(dense)
            handle = tomeplug.patch(patched, "tome", parse_layers(text, dense), r=args.r, scope=scope)
            self.encoders[scope], self.layers[scope] = patched, (text, handle)
        self.encoders = {k: cast(m, device, DTYPES[args.dtype]) for k, m in self.encoders.items()}
        self.gflops = {"dense": self.count(dense, {"model": name, "size": self.size}, args)}
        for scope, (_, handle) in self.layers.items():
            key = {"model": name, "size": self.size, "schedule": handle.to_dict()}
            self.gflops[scope] = self.count(self.encoders[scope], key, args)

    def count(self, encoder: torch.nn.Module, key: dict, args: argparse.Namespace) -> float | None:
        """Cached fvcore GFLOPs (None where counting is off and uncached, or fails: said on stderr)."""
        try:
            return gflops(encoder, key, self.size, count=not args.no_count_flops)
        except Exception:  # a bound is optional; the timings are what the GPU is for
            print(f"FLOPs count failed for {self.name}:\n{traceback.format_exc()}", file=sys.stderr)
            return None

    def bound(self, scope: str) -> float | None:
        """Dense / merged FLOPs of ``scope``."""
        dense, merged = self.gflops["dense"], self.gflops[scope]
        return dense / merged if dense and merged else None

    def use_sdpa(self) -> None:
        """Every encoder's dense SAM ViT attentions as one SDPA call (``bench/sdpa_attention.py``; idempotent)."""
        for encoder in self.encoders.values():
            use_sdpa(encoder)

    def input(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A fixed random batch."""
        x = torch.randn(batch, 3, self.size, self.size, generator=torch.Generator().manual_seed(0))
        return x.to(device, dtype)


def ensure_builtins() -> None:
    """Register the built-in strategies and adapters where no entry point did (the repository on PYTHONPATH
    without ``pip install``, as on a bare GPU machine)."""
    registry = tomeplug.get_registry()
    if "sam_vit" not in registry.adapters:
        registry.register_plugin(tomeplug_strategies, "builtin_strategies")
        registry.register_plugin(tomeplug_adapters, "builtin_adapters")


def run_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's embedding of ``x``, without autograd."""
    with torch.no_grad():
        return embedding(model(x))


def time_group(runners: dict, x: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    """Interleaved timing, peak memory and cosine of the dense runner and the merged ones."""
    fns = {name: functools.partial(run_forward, model, x) for name, model in runners.items()}
    timing = compare(fns, warmup=args.warmup, repeats=args.repeats)
    peaks = {}
    for name, fn in fns.items():
        with PeakMemory(device) as meter:
            fn()
        peaks[name] = meter.peak_mb
    dense = timing["last"]["dense"].float().flatten(1)
    cosine = {n: F.cosine_similarity(dense, o.float().flatten(1)).min().item() for n, o in timing["last"].items()}
    return {"timing": timing, "peak_mb": peaks, "cosine": cosine}


def rows_of(prep: Prepared, group: dict, baseline: str, batch: int) -> list[dict]:
    """One row per merged scope of a timed group."""
    timing, rows = group["timing"], []
    for scope in (name for name in timing["median_s"] if name != "dense"):
        bound, speedup = prep.bound(scope), timing["speedup"][scope]
        layers_text, handle = prep.layers[scope]
        rows.append({
            "model": prep.name, "size": prep.size, "batch": batch, "baseline": baseline, "scope": scope,
            "layers": layers_text, "blocks": len(handle.schedule),
            "dense_s": timing["median_s"]["dense"], "patched_s": timing["median_s"][scope], "speedup": speedup,
            "speedup_min": min(timing["all_s"]["dense"]) / min(timing["all_s"][scope]),
            "flops_bound": bound, "speedup_over_bound": speedup / bound if bound else None,
            "dense_peak_mb": group["peak_mb"]["dense"], "patched_peak_mb": group["peak_mb"][scope],
            "cosine": group["cosine"][scope], "all_s": {k: timing["all_s"][k] for k in ("dense", scope)},
        })  # fmt: skip
    return rows


def profile(prep: Prepared, x: torch.Tensor, out_dir: Path, device: torch.device) -> list[Path]:
    """torch.profiler's top 25 ops by self time of one dense and one span forward; the files written."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    written = []
    for variant in ("dense", "span"):
        run_forward(prep.encoders[variant], x)  # warm
        with profiler(activities=activities) as prof:
            run_forward(prep.encoders[variant], x)
            if device.type == "cuda":
                torch.cuda.synchronize()
        path = out_dir / f"gpu_profile_{prep.name}_{variant}_b{x.shape[0]}.txt"
        path.write_text(prof.key_averages().table(sort_by=key, row_limit=25))
        written.append(path)
    return written


def dense_rows(prep: Prepared, baseline: str, batch: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The eager or sdpa rows of one (model, batch): the dense encoder and every merged scope, uncompiled."""
    x = prep.input(batch, device, DTYPES[args.dtype])
    return rows_of(prep, time_group(prep.encoders, x, args, device), baseline, batch)


def compiled_rows(prep: Prepared, batch: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The compile rows of one (model, batch): fresh compiles of the dense encoder and the ``--compile-scopes``
    (``dynamic=False``, the merged ones ``fullgraph=True``); each one's first call, the compile, in ``compile_s``."""
    torch._dynamo.reset()  # one compile per (model, batch): no cache-size limit, no dynamic shapes
    x = prep.input(batch, device, DTYPES[args.dtype])
    options = {"backend": args.compile_backend, "dynamic": False}
    runners = {"dense": torch.compile(prep.encoders["dense"], **options)}
    for scope in args.compile_scopes.split(","):
        runners[scope] = torch.compile(prep.encoders[scope], fullgraph=True, **options)
    compile_s = {}
    for variant, runner in runners.items():
        began = time.perf_counter()
        run_forward(runner, x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        compile_s[variant] = time.perf_counter() - began
    rows = rows_of(prep, time_group(runners, x, args, device), "compile", batch)
    return [{**row, "compile_s": {"dense": compile_s["dense"], "patched": compile_s[row["scope"]]}} for row in rows]


def markdown(rows: list[dict]) -> str:
    """The rows as the markdown table of bench/RESULTS.md."""

    def num(value, fmt):
        return "—" if value is None else format(value, fmt)

    lines = [
        "| model | batch | baseline | scope | dense ms | patched ms | speedup | FLOPs bound | speedup / bound "
        "| peak MiB dense → patched | cosine | note |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in rows:
        if "error" in r or "skipped" in r:
            note = r.get("skipped") or r["error"].splitlines()[-1][:80]
            lines.append(f"| {r['model']} | {r['batch']} | {r['baseline']} | {r['scope']} | | | | | | | | {note} |")
            continue
        compiled = (
            f"compile {r['compile_s']['dense']:.0f} s / {r['compile_s']['patched']:.0f} s" if "compile_s" in r else ""
        )
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['baseline']} | {r['scope']} | {1e3 * r['dense_s']:.1f} | "
            f"{1e3 * r['patched_s']:.1f} | **{r['speedup']:.2f}×** | {num(r['flops_bound'], '.3f')}× | "
            f"{num(r['speedup_over_bound'] and 100 * r['speedup_over_bound'], '.0f')}% | "
            f"{r['dense_peak_mb']:.0f} → {r['patched_peak_mb']:.0f} | {r['cosine']:.4f} | {compiled} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Time every (model, baseline, batch, scope); append JSON lines to ``--out``, print the table; the rows."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    baselines, compile_scopes = args.baselines.split(","), args.compile_scopes.split(",")
    unknown = set(baselines) - {"eager", "sdpa", "compile"} | set(compile_scopes) - set(SCOPES)
    if unknown:
        raise SystemExit(f"unknown {sorted(unknown)}: baselines are eager, sdpa, compile; scopes {', '.join(SCOPES)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ensure_builtins()
    common = {
        "date": datetime.date.today().isoformat(), "device": args.device, "dtype": args.dtype, "r": args.r,
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__, "repeats": args.repeats, "warmup": args.warmup,
    }  # fmt: skip
    rows: list[dict] = []

    def record(prep: Prepared, baseline: str, batch: int, scopes, work) -> None:
        """Append the rows ``work()`` gives; a failure, or a ``work`` of None (skipped), gives one row per scope
        that says so, and the run goes on."""
        stub = {"model": prep.name, "batch": batch, "baseline": baseline}
        skipped = f"skipped: its compile would pass --budget-s {args.budget_s:.0f}"
        try:
            new = work() if work else [{**stub, "scope": s, "skipped": skipped} for s in scopes]
        except Exception:
            print(traceback.format_exc(), file=sys.stderr)
            new = [{**stub, "scope": s, "error": traceback.format_exc()} for s in scopes]
        with args.out.open("a") as out:
            out.writelines(json.dumps({**common, **row}) + "\n" for row in new)
        rows.extend(new)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    prepared = []
    for name in args.models.split(","):
        prep = Prepared(name, args, device)
        prepared.append(prep)
        print(f"{name}: built, patched and FLOPs counted at {time.perf_counter() - start:.0f} s", flush=True)
        for baseline in (b for b in ("eager", "sdpa") if b in baselines):
            if baseline == "sdpa":
                prep.use_sdpa()
            for batch in batches:
                record(
                    prep, baseline, batch, SCOPES, functools.partial(dense_rows, prep, baseline, batch, args, device)
                )
        if args.profile:
            prep.use_sdpa()
            try:
                for path in profile(
                    prep, prep.input(max(batches), device, DTYPES[args.dtype]), args.out.parent, device
                ):
                    print(f"profile: {path}")
            except Exception:  # the table matters more
                print(f"profile of {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
        print(f"{name}: eager / sdpa rows done at {time.perf_counter() - start:.0f} s", flush=True)

    compile_times: list[float] = []
    for prep in prepared if "compile" in baselines else []:
        prep.use_sdpa()
        for batch in batches:
            began = time.perf_counter()
            fits = began - start + max(compile_times, default=COMPILE_GUESS_S) <= args.budget_s
            work = functools.partial(compiled_rows, prep, batch, args, device) if fits else None
            record(prep, "compile", batch, compile_scopes, work)
            if fits:
                compile_times.append(time.perf_counter() - began)
    torch._dynamo.reset()
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s, appended to {args.out}\n")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()

"""torch.profiler's top ops of one encoder forward, eager and compiled: where a merged encoder spends its time.

For rows of bench/RESULTS.md slower than their FLOPs bound, e.g. the compiled bf16 span row of SAM ViT-L:

    python bench/profile_forward.py --model sam_vit_l --scope span --dtype bf16 --compile --kernel-names

builds the random-weight encoder (``--scope dense``: unpatched; else ToMe r = ``--r`` on every block, ``attn`` on the
published schedule), the SDPA baseline in its unmerged SAM attentions (``bench/sdpa_attention.py``), times one
forward after a warm-up and prints the profiler's table (self CPU time) for the eager encoder and, with
``--compile``, for ``torch.compile(fullgraph=True, dynamic=False)`` of it (its first call, the compile, timed too;
``--kernel-names``: inductor's generated kernels each a row, ``graph_0_cpp_fused_<the ops they fuse>_<n>``).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import torch._inductor.config as inductor_config
from encoder_speed import DEFAULT_LAYERS, DTYPES, SMALL_INPUTS, build_encoder, cast, parse_layers  # bench/
from sdpa_attention import use_sdpa
from torch.profiler import ProfilerActivity, profile

import tomeplug


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam_vit_l", help="a harness model, random weights (default: sam_vit_l)")
    parser.add_argument("--scope", default="span", choices=["dense", "attn", "block", "span"], help="default: span")
    parser.add_argument("--r", type=float, default=0.5, help="ToMe merge fraction (default: 0.5)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="default: fp32")
    parser.add_argument("--compile", action="store_true", help="also profile the inductor-compiled encoder")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default: inductor)")
    parser.add_argument(
        "--kernel-names",
        action="store_true",
        help="name inductor's generated CPU kernels in the compiled table (else one row per compiled graph's call)",
    )
    parser.add_argument("--rows", type=int, default=20, help="ops per table (default: 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def profiled(run, x: torch.Tensor, rows: int) -> tuple[float, str]:
    """One timed forward after a warm-up, and the profiler's table of a third."""
    run(x)
    began = time.perf_counter()
    run(x)
    seconds = time.perf_counter() - began
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(x)
    return seconds, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the tables; return the timed seconds per variant (``compile`` included where asked)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = build_encoder(args.model)
    if args.scope != "dense":
        text = DEFAULT_LAYERS.get(args.model, "windowed") if args.scope == "attn" else "all"
        tomeplug.patch(encoder, "tome", parse_layers(text, encoder), r=args.r, scope=args.scope)
    encoder = cast(encoder, torch.device("cpu"), DTYPES[args.dtype])
    use_sdpa(encoder)
    size = SMALL_INPUTS.get(args.model, 1024)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(DTYPES[args.dtype])
    runners = {"eager": encoder}
    if args.compile:
        runners["compiled"] = torch.compile(encoder, fullgraph=True, dynamic=False, backend=args.backend)
    # inductor's C++ kernels record themselves to the profiler, by name, when compiled with this set
    kernel_names = inductor_config.patch({"cpp.enable_kernel_profile": True}) if args.kernel_names else nullcontext()
    seconds = {}
    with kernel_names, torch.inference_mode():
        for name, runner in runners.items():
            if name == "compiled":
                began = time.perf_counter()
                runner(x)
                seconds["compile"] = time.perf_counter() - began
            seconds[name], table = profiled(runner, x, args.rows)
            title = f"{args.model} {args.scope} {args.dtype} {name}: {seconds[name]:.3f} s a forward"
            print(f"{title}\n{table}", flush=True)
    if "compile" in seconds:
        print(f"compile (first call): {seconds['compile']:.1f} s")
    return seconds


if __name__ == "__main__":
    main()

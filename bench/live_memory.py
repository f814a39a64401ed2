"""Peak live-tensor memory of one encoder forward, dense vs merged, and what is alive at each peak.

Run from the repository root (random weights), e.g.

    .venv/bin/python bench/live_memory.py --model sam_vit_l --baseline sdpa --scopes attn,span

Each encoder (the dense one, then one patched copy per scope, ``--strategy`` at ``--r`` on ``--layers`` as in
``bench/encoder_speed.py``) runs one forward under ``torch.no_grad`` and
``tomeplug_eval.memory.LiveTensorPeak``: the peak bytes of the tensors the forward allocates, counted op by
op until each is freed. Deterministic (no allocator, no sampling, no load dependence), unlike the CPU
resident-set peak ``encoder_speed.py`` also reports; it does not see kernels' internal scratch buffers. For
each encoder it prints the peak and the ``--top`` largest tensors alive at it: the op that made each, shape,
dtype, bytes and the caller (``file:line function``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

import tomeplug
from tomeplug_eval.memory import LiveTensorPeak
from tomeplug_eval.model_catalog import ALIASES, MODELS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/'s own modules, however this file is loaded
from encoder_speed import DEFAULT_LAYERS, SMALL_INPUTS, build_encoder, parse_layers  # noqa: E402
from sdpa_attention import use_sdpa  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option says what it does (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    model = {"type": lambda name: ALIASES.get(name, name), "choices": list(MODELS), "metavar": "MODEL"}
    add("--model", default="sam_vit_l", help="a harness model, random weights (default: %(default)s)", **model)
    add("--strategy", default="tome", help="registered strategy (default: %(default)s)")
    add("--layers", help="as encoder_speed.py's --layers (default: paper for ViT-L, vitb for ViT-B, else all)")
    add("--r", type=float, default=0.5, help="merge fraction (default: %(default)s)")
    add("--scopes", default="attn,span", help="comma-separated scopes, one patched copy each (default: %(default)s)")
    add("--baseline", choices=["eager", "sdpa"], default="sdpa", help="dense attention form (default: %(default)s)")
    add("--size", type=int, help="input side in pixels (default: as encoder_speed.py)")
    add("--top", type=int, default=8, help="largest live tensors shown per peak (default: %(default)s)")
    add("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    add("--json", type=Path, help="append {model, scope: peak MiB, ...} as one JSON line to this file")
    return parser


def main() -> None:
    """Measure and print each encoder's live-tensor peak."""
    args = build_parser().parse_args()
    size = args.size or SMALL_INPUTS.get(args.model, 1024)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = build_encoder(args.model)
    layers = parse_layers(args.layers or DEFAULT_LAYERS.get(args.model, "all"), dense)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    row = {"model": args.model, "size": size, "baseline": args.baseline, "layers": args.layers, "r": args.r}
    for scope in ["dense", *args.scopes.split(",")]:
        encoder = copy.deepcopy(dense)  # dense stays upstream's, for the next copy to patch
        if scope != "dense":
            tomeplug.patch(encoder, args.strategy, layers, r=args.r, scope=scope)
        if args.baseline == "sdpa":
            use_sdpa(encoder)
        with torch.no_grad(), LiveTensorPeak() as meter:
            encoder(x)
        row[f"{scope}_live_peak_mb"] = meter.peak_mb
        print(f"{args.model} {size}px {scope}: {meter.report(args.top)}", flush=True)
        del encoder
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

"""The command line of :func:`tomeplug_eval.tune.tune`: ``python -m tomeplug_eval.tune --help``.

Builds a harness model (official checkpoint or random weights), loads calibration (and held-out) images
from a folder or a built-in set, tunes, and writes the schedule as JSON (:mod:`.schedule_file`: the
harness runs it with ``strategy=mix layers=@FILE``) and the report as markdown.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .tune import DEFAULT_R, DEFAULT_SCOPES, tune
from .tune_report import TuneReport


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _param(text: str) -> tuple[str, Any]:
    import json

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param {text!r}: write NAME=VALUE, e.g. margin=0.5")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m tomeplug_eval.tune``."""
    parser = argparse.ArgumentParser(
        prog="python -m tomeplug_eval.tune",
        description="Search the most faithful token-merging schedule meeting a FLOPs or speed target, on "
        "calibration images without labels; writes the schedule (JSON: tomeplug.patch(model, None, "
        "layers=...), or the harness's strategy=mix layers=@FILE) and a markdown report.",
    )
    parser.add_argument("--model", default="sam_vit_b", help="a harness model name (default sam_vit_b)")
    parser.add_argument("--checkpoint", default="auto", help="auto | random | FILE | FOLDER (as the harness)")
    parser.add_argument(
        "--images", default="synthetic", help="a folder of images (jpg, png), or a built-in set: synthetic, smoke"
    )
    parser.add_argument("--limit", type=int, default=4, help="calibration images (default 4)")
    parser.add_argument("--holdout", type=int, default=0, help="further images to validate the schedule on")
    parser.add_argument("--target", default="flops=0.8", help="flops=FRACTION or speedup=FACTOR (default flops=0.8)")
    parser.add_argument("--strategy", default="tome", help="the candidates' strategy (default tome)")
    parser.add_argument("--r", type=_floats, default=list(DEFAULT_R), help="candidate r values (default 0.25,0.5)")
    parser.add_argument("--scopes", default=",".join(DEFAULT_SCOPES), help="candidate scopes (default attn)")
    parser.add_argument("--blocks", type=_ints, default=None, help="candidate blocks, e.g. 0,4,5 (default all)")
    parser.add_argument("--param", type=_param, action="append", default=[], help="strategy parameter NAME=VALUE")
    parser.add_argument("--search", choices=("greedy", "exhaustive"), default="greedy")
    parser.add_argument("--boxes-per-side", type=int, default=2, help="box prompt grid (default 2)")
    parser.add_argument("--out", type=Path, default=Path("schedule.json"), help="schedule JSON (default schedule.json)")
    parser.add_argument("--report", type=Path, default=None, help="markdown report (default: beside --out, .md)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the report (png, svg, pdf)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep measurements here (resume)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser.parse_args(argv)


def load_images(source: str, count: int) -> list[Any]:
    """``count`` images: from a folder (sorted *.jpg, *.jpeg, *.png) or a built-in dataset by name."""
    import numpy as np

    from .data import load_dataset
    from .image_files import load_image

    folder = Path(source).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(files) < count:
            raise ValueError(f"{folder} holds {len(files)} images (jpg, png); {count} are needed")
        return [np.asarray(load_image(p).convert("RGB")) for p in files[:count]]
    if source not in ("synthetic", "smoke"):
        raise ValueError(f"--images {source!r} is neither a folder nor a built-in set (synthetic, smoke)")
    dataset = load_dataset(source, **({"count": count} if source == "synthetic" else {}))
    if len(dataset) < count:
        raise ValueError(f"--images {source} has {len(dataset)} images; {count} are needed")
    return [dataset[i].image for i in range(count)]


def main(argv: Sequence[str] | None = None) -> TuneReport:
    """Run the command line: build the model, tune, write the schedule and the report; the report."""
    from .model_catalog import RandomWeightsWarning, build_model, resolve_checkpoint

    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)  # fmt: skip
    images = load_images(args.images, args.limit + args.holdout)
    torch.manual_seed(args.seed)
    checkpoint = resolve_checkpoint(args.model, args.checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomWeightsWarning)
        model = build_model(args.model, checkpoint).to(device)
    for warning in caught:
        print(f"[tomeplug] !!! {warning.message}", file=sys.stderr)
    schedule, report = tune(
        model,
        images[: args.limit],
        args.target,
        blocks=args.blocks,
        strategy=args.strategy,
        r=args.r,
        scopes=[s for s in args.scopes.split(",") if s],
        params=dict(args.param),
        search=args.search,
        validation_images=images[args.limit :] or None,
        boxes_per_side=args.boxes_per_side,
        cache_dir=args.cache_dir,
        progress=args.progress,
    )
    from .schedule_file import write_schedule

    weights = "random" if checkpoint is None else str(checkpoint)
    record = {k: v for k, v in report.to_dict().items() if k != "schedule"}
    write_schedule(args.out, schedule, model=args.model, weights=weights, images=args.images, **record)
    report_path = args.report or args.out.with_suffix(".md")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.to_markdown())
    if args.plot is not None:
        report.plot(args.plot)
    print(report.to_markdown())
    print(f"schedule: {args.out}  report: {report_path}  (harness: strategy=mix layers=@{args.out})")
    return report

"""``make demo``: the evaluation harness on its built-in default, and the table it produces.

Runs the harness (``python -m tomeplug_eval.harness -m``, the ``tomeplug-eval`` console script) with SAM
ViT-B (the official checkpoint if it is at ``checkpoints/sam_vit_b_01ec64.pth``, else random weights,
said loudly and recorded as ``weights: random``) on the first two synthetic images and the real smoke
photo (imgaug's quokka), ``none`` (the unmerged baseline) against every registered strategy at ``r=0.5``,
then prints the markdown table and its column legend. About 5 minutes on 2 idle CPU cores (21 timed
encoder forwards at 1024x1024, ~12 s dense in fp32, and one FLOP trace per variant), longer on a busy
machine; a second run finds every row finished and only prints the table (delete ``outputs/demo`` to
recompute).

The schedule is the paper's SAM ViT-L schedule ``[0, 4, 5, 10, 16, 17, 19, 20, 22, 23]`` scaled to the
encoder's depth (block i -> floor(i * depth / 24), duplicates dropped): ``[0, 2, 5, 8, 9, 10, 11]`` on
ViT-B's 12 blocks, i.e. all four global blocks (2, 5, 8, 11) and windowed blocks 0, 9, 10.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import tomeplug

from .harness import CONF

STRATEGY_CONFIGS = CONF / "strategy"
PAPER_SCHEDULE_VIT_L = (0, 4, 5, 10, 16, 17, 19, 20, 22, 23)


def default_layers(depth: int) -> list[int]:
    """The paper's 24-block ViT-L schedule scaled to ``depth`` blocks (i -> floor(i * depth / 24))."""
    return sorted({i * depth // 24 for i in PAPER_SCHEDULE_VIT_L})


def sweeps(strategies: Sequence[str]) -> list[list[str]]:
    """The harness's strategy overrides: one sweep over the strategies with a config file (``none`` first),
    and one ``strategy=plugin strategy.name=...`` sweep for registered strategies without one."""
    with_file = [s for s in strategies if (STRATEGY_CONFIGS / f"{s}.yaml").is_file()]
    others = [s for s in strategies if s not in with_file]
    out = [[f"strategy={','.join(['none', *with_file])}"]]
    if others:
        out.append(["strategy=plugin", f"strategy.name={','.join(others)}"])
    return out


def commands(args: argparse.Namespace) -> list[list[str]]:
    """The harness command lines the demo runs."""
    common = [
        f"model={args.model}",
        f"dataset={','.join(args.datasets)}",
        f"limit={args.limit}",
        f"layers=[{','.join(map(str, args.layers))}]",
        f"r={args.r}",
        f"warmup={args.warmup}",
        f"output_dir={args.output_dir}",
        *args.overrides,
    ]
    return [[sys.executable, "-m", "tomeplug_eval.harness", "-m", *sweep, *common] for sweep in sweeps(args.strategies)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` documents it."""
    parser = argparse.ArgumentParser(
        prog="python -m tomeplug_eval.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sam_vit_b", help="a harness model (tomeplug_eval/conf/model/)")
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "smoke"])
    parser.add_argument("--limit", type=int, default=2, help="images per dataset")
    parser.add_argument("--strategies", nargs="+", help="default: every registered strategy")
    parser.add_argument("--layers", type=lambda t: [int(i) for i in t.split(",")], help="default: see above")
    parser.add_argument("--depth", type=int, default=12, help="encoder depth the default schedule is scaled to")
    parser.add_argument("--r", type=float, default=0.5, help="merge fraction of each attention call's tokens")
    parser.add_argument("--warmup", type=int, default=0, help="untimed forwards per run (the median absorbs one)")
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("overrides", nargs="*", help="more harness overrides, e.g. threads=2 checkpoint=random")
    args = parser.parse_args(argv)
    args.strategies = args.strategies or tomeplug.list_strategies()
    args.layers = args.layers if args.layers is not None else default_layers(args.depth)
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the demo's sweeps and print the table; returns the table's markdown."""
    args = parse_args(argv)
    print(f"demo: {args.model} on {' + '.join(args.datasets)} (first {args.limit} images each), none vs "
          f"{', '.join(args.strategies)} at r={args.r} on blocks {args.layers}", flush=True)  # fmt: skip
    for command in commands(args):
        print("$ " + shlex.join(command), flush=True)  # pasteable into a shell as it stands
        subprocess.run(command, check=True)
    table = (Path(args.output_dir) / "results.md").read_text()
    print(f"\n{table}\nFull results: {args.output_dir}/results.jsonl, .csv, .png", flush=True)
    return table


if __name__ == "__main__":
    main()

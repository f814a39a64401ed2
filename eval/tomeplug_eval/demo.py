"""``make demo``: SAM's image encoder on a real photo, dense vs. token merging, side by side.

Run ``python -m tomeplug_eval.demo`` (``--help`` for options). It builds SAM ViT-B (random weights unless
the official checkpoint is at ``checkpoints/sam_vit_b_01ec64.pth``), loads the quokka photo that ships in
the ``imgaug`` wheel, resizes and pads it as SAM does (1024x1024), and runs the image encoder (fp32, no
grad) without and with merging. It prints, for both: tokens per attention call, encoder GFLOPs (fvcore),
median wall-clock (interleaved runs), speedup, FLOPs ratio and the cosine of the image embeddings.

The default schedule is the paper's SAM ViT-L schedule ``[0, 4, 5, 10, 16, 17, 19, 20, 22, 23]`` scaled
to the encoder's depth (block i -> floor(i * depth / 24), duplicates dropped): ``[0, 2, 5, 8, 9, 10, 11]``
on ViT-B's 12 blocks, i.e. all four global blocks (2, 5, 8, 11) and windowed blocks 0, 9, 10.
About two minutes on 2 idle CPU cores for ViT-B (3.5 min measured on a busy machine).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import tomeplug
from tomeplug.torchvision_compat import ensure_torchvision
from tomeplug_eval.flops import count_flops
from tomeplug_eval.latency import compare
from tomeplug_eval.metrics import embedding_cosine
from tomeplug_eval.sam_models import MODELS, RandomWeightsWarning, build_model, default_checkpoint

PAPER_SCHEDULE_VIT_L = (0, 4, 5, 10, 16, 17, 19, 20, 22, 23)


def default_layers(depth: int) -> list[int]:
    """The paper's 24-block ViT-L schedule scaled to ``depth`` blocks (i -> floor(i * depth / 24))."""
    return sorted({i * depth // 24 for i in PAPER_SCHEDULE_VIT_L})


def load_photo() -> tuple[np.ndarray, str]:
    """The quokka photo from the installed ``imgaug`` files (never imported), else a generated image."""
    from PIL import Image

    try:
        path = Path(importlib.metadata.distribution("imgaug").locate_file("imgaug/quokka.jpg"))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is not None and path.is_file():
        return np.asarray(Image.open(path).convert("RGB")), f"{path.name} from the imgaug wheel"
    y, x = np.mgrid[0:480, 0:640] / 640.0
    image = np.stack([np.sin(9 * x) * 0.5 + 0.5, y, (x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.04], axis=-1)
    return (image * 255).astype(np.uint8), "GENERATED image (imgaug's quokka.jpg is not installed)"


def preprocess(sam: nn.Module, image: np.ndarray) -> Tensor:
    """SAM's input pipeline: resize the longest side to the encoder's size, normalise, pad: (1, 3, S, S)."""
    ensure_torchvision()
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)
    return sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())


def tokens_per_call(encoder: nn.Module, schedule: dict[int, Any]) -> dict[str, str]:
    """Tokens of one attention call, windowed and global, e.g. ``196->98 in 3/8`` for merging blocks."""
    grid = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
    kinds: dict[str, list[int]] = {"windowed": [], "global": []}
    for i, block in enumerate(encoder.blocks):
        kinds["windowed" if block.window_size else "global"].append(i)
    out = {}
    for kind, blocks in kinds.items():
        if not blocks:
            out[kind] = "-"
            continue
        n = encoder.blocks[blocks[0]].window_size ** 2 if kind == "windowed" else grid**2
        after = "/".join(str(m) for m in sorted({n - schedule[i].num_to_merge(n) for i in blocks if i in schedule}))
        hits = sum(i in schedule for i in blocks)
        out[kind] = f"{n}->{after} in {hits}/{len(blocks)}" if hits else str(n)
    return out


def block_list(text: str) -> list[int]:
    """``"0,2,5"`` -> ``[0, 2, 5]``."""
    return [int(i) for i in text.split(",") if i.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` documents it."""
    parser = argparse.ArgumentParser(
        prog="python -m tomeplug_eval.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_b", choices=sorted(MODELS), help="tiny is a small SAM for tests")
    parser.add_argument("--checkpoint", type=Path, help="default: checkpoints/<official name> if present, else random")
    parser.add_argument("--strategy", default="tome", help="a registered strategy (python -m tomeplug list)")
    parser.add_argument("--r", type=float, default=0.5, help="merge fraction of each attention call's tokens")
    parser.add_argument("--layers", type=block_list, help="block indices, e.g. 0,2,5 (default: see above)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per variant (median)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, count, time and compare; prints the report and returns its numbers."""
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or default_checkpoint(args.model)
    if args.checkpoint is None and (checkpoint is None or not checkpoint.is_file()):
        where = f"at {checkpoint}" if checkpoint else f"exists for {args.model}"
        weights, checkpoint = f"RANDOM (no official checkpoint {where}): FLOPs and times real, outputs not", None
    else:
        weights = str(checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # said in the header below instead
        sam = build_model(args.model, checkpoint)
    image, source = load_photo()
    x = preprocess(sam, image)
    encoder = sam.image_encoder
    layers = args.layers if args.layers is not None else default_layers(len(encoder.blocks))
    schedule = tomeplug.patch(encoder, args.strategy, layers, r=args.r).schedule
    tomeplug.unpatch(encoder)
    name = f"{args.strategy} r={args.r}"
    print(f"!!! weights: {weights}" if checkpoint is None else f"weights: {weights}")
    print(f"model: SAM {args.model} image encoder, fp32, {args.threads} thread(s), input {tuple(x.shape)}")
    print(f"image: {source}, {image.shape[1]}x{image.shape[0]} -> resized longest side, padded")
    origin = "--layers" if args.layers is not None else "default: the paper's ViT-L schedule scaled to the depth"
    print(f"schedule: {name} on blocks {sorted(schedule)} of {len(encoder.blocks)} ({origin})")

    def merged_forward() -> Tensor:
        with tomeplug.patch(encoder, args.strategy, layers, r=args.r):
            return encoder(x)

    with torch.no_grad():
        flops = {"dense": count_flops(encoder, x)}
        with tomeplug.patch(encoder, args.strategy, layers, r=args.r):
            flops[name] = count_flops(encoder, x)
        timing = compare({"dense": lambda: encoder(x), name: merged_forward}, args.warmup, args.repeats)
    rows = []
    for variant, sched in (("dense", {}), (name, schedule)):
        tokens = tokens_per_call(encoder, sched)
        rows.append({
            "variant": variant, "window_tokens": tokens["windowed"], "global_tokens": tokens["global"],
            "gflops": flops[variant].gflops, "time_s": timing["median_s"][variant],
            "speedup": timing["speedup"][variant], "flops_ratio": flops[variant].total / flops["dense"].total,
            "cosine": float(embedding_cosine(timing["last"]["dense"], timing["last"][variant])[0]),
        })  # fmt: skip
    print_table(rows)
    overhead = flops[name].overhead_g
    print(f"merge overhead ops (not in GFLOPs): {overhead:.3f} G elements {sorted(flops[name].overhead)}")
    runs = "; ".join(f"{v}: {', '.join(f'{t:.3f}' for t in ts)}" for v, ts in timing["all_s"].items())
    print(f"time s: median of {args.repeats} interleaved runs ({runs}); cosine: image embeddings vs dense")
    flop_records = {variant: report.to_dict() for variant, report in flops.items()}
    return {"rows": rows, "weights": weights, "layers": sorted(schedule), "flops": flop_records}


def print_table(rows: list[dict[str, Any]]) -> None:
    """The side-by-side table: tokens per attention call, GFLOPs, time, speedup, FLOPs ratio, cosine."""
    head = ("variant", "tokens/call windowed", "tokens/call global", "GFLOPs", "time s", "speedup", "FLOPs", "cosine")
    widths = (14, 21, 19, 9, 8, 8, 7, 7)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        cells = (
            r["variant"], r["window_tokens"], r["global_tokens"], f"{r['gflops']:.5g}", f"{r['time_s']:.3f}",
            f"{r['speedup']:.2f}x", f"{r['flops_ratio']:.3f}", f"{r['cosine']:.4f}",
        )  # fmt: skip
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``python -m tomeplug_eval.demo``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()

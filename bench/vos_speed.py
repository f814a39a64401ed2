"""SAM 2 video object segmentation, per frame at a steady state: dense vs merged encoder, memory attention, both.

Run from the repository root (random weights: the work does not depend on them), e.g.

    .venv/bin/python bench/vos_speed.py --model sam2.1_hiera_t --rounds 3 --json outputs/vos_speed.jsonl

Method:

- steady state: a ``SAM2VideoPredictor`` (``--model``, any SAM 2 model of the harness, built at its own
  ``image_size``: 1024 for the official ones) tracks one object of a synthetic video (``synthetic_video``,
  frames resized to the model's size by ``init_state``), prompted by its first-frame mask, densely through
  ``num_maskmem`` frames. The timed frame is the next one: its memory attention sees the full bank
  (``num_maskmem`` memory frames, every object pointer so far). A timed call is one
  ``_run_single_frame_inference`` of that frame (image encoder with the feature cache cleared, memory
  attention, mask decoder, memory encoder); its output is not stored, so every call sees the same bank.
- variants: ``dense``; ``encoder`` (``tomeplug.patch(model, strategy, r=R, scope=SCOPE)``: every encoder
  block); ``memory`` (``target="memory_attention"``, scope ``--memory-scope``, every layer; with ``--memory-r`` the
  memory frames' tokens merge too); ``both``.
  Each is a copy of the predictor; they run interleaved (``tomeplug_eval.latency.compare``: ``--warmup``
  untimed rounds, then ``--rounds`` rounds in alternating order), and each stage is the median over rounds.
- time split: the image encoder's and the memory attention's forwards are timed by hooks
  (``tomeplug_eval.video.vos.EncoderTimer``, device-synchronised); rest = frame - encoder - memory.
- FLOPs (fvcore, SDPA counted; ``--no-flops`` skips): the encoder on one frame, and one steady-state
  memory-attention call (``tomeplug_eval.video.memory_cost``: ``num_maskmem`` x N memory tokens plus
  ``max_obj_ptrs_in_encoder`` pointers, a little more than the timed frame's bank holds when the video is
  shorter than the pointer window).
- mask IoU: the variant's mask (logits > 0, at the model's size) against the dense one's (random weights:
  a smoke check).

Prints a table and one JSON object per variant (appended to ``--json`` as lines).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import tempfile
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

import tomeplug
from tomeplug_eval.flops import count_flops
from tomeplug_eval.latency import compare
from tomeplug_eval.model_catalog import ALIASES, MODELS, RandomWeightsWarning, build_model
from tomeplug_eval.video import synthetic_video
from tomeplug_eval.video.memory_cost import memory_attention_flops
from tomeplug_eval.video.vos import EncoderTimer, sam2_progress_bars

VIDEO_PREDICTOR = "sam2.sam2_video_predictor.SAM2VideoPredictor"
VARIANTS = ("dense", "encoder", "memory", "both")
STAGES = ("frame", "encoder", "memory", "rest")


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Method: this file's docstring.")
    add = parser.add_argument
    add("--model", default="sam2.1_hiera_t", help="a SAM 2 model of the harness (default: %(default)s)")
    add("--strategy", default="tome", help="registered strategy (default: %(default)s)")
    add("--r", type=float, default=0.5, help="merge fraction, encoder and memory attention (default: %(default)s)")
    add("--scope", default="span", help="encoder merge scope (default: %(default)s)")
    add("--memory-scope", default="span", help="memory-attention merge scope (default: %(default)s)")
    add(
        "--memory-r",
        type=float,
        help="also merge the memory frames' tokens (keys/values) at this fraction (the option memory_r; default: "
        "the frame's tokens only)",
    )
    add("--rounds", type=int, default=3, help="timed rounds; one frame per variant each (default: %(default)s)")
    add("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    add("--video-size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"), help="synthetic frames (H W)")
    add("--no-flops", action="store_true", help="skip the fvcore counts")
    add("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if available")
    add("--json", type=Path, help="append one JSON line per variant to this file")
    return parser


def patched_copies(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """One copy of the predictor per variant, each patched as its name says."""
    encoder = {"strategy": args.strategy, "r": args.r, "scope": args.scope}
    memory = {"strategy": args.strategy, "r": args.r, "scope": args.memory_scope, "target": "memory_attention"}
    if args.memory_r is not None:
        memory["memory_r"] = args.memory_r
    plans = {"dense": [], "encoder": [encoder], "memory": [memory], "both": [encoder, memory]}
    copies = {}
    for name in VARIANTS:
        copies[name] = copy.deepcopy(model)
        for options in plans[name]:
            options = dict(options)
            tomeplug.patch(copies[name], options.pop("strategy"), **options)
    return copies


def steady_state(model: torch.nn.Module, args: argparse.Namespace, folder: Path) -> tuple[dict[str, Any], int]:
    """An inference state of one object tracked densely through ``num_maskmem`` frames, and the next frame's index."""
    frames = int(model.num_maskmem) + 1
    item = synthetic_video(count=1, frames=frames, size=tuple(args.video_size), seed=0, cache_dir=folder)[0]
    with torch.inference_mode(), sam2_progress_bars(False):
        state = model.init_state(str(item.frame_dir))
        obj = item.object_ids[0]
        model.add_new_mask(state, frame_idx=0, obj_id=obj, mask=item.masks[0][obj])
        for _ in model.propagate_in_video(state, max_frame_num_to_track=frames - 2):
            pass
    return state, frames - 1


def frame_step(model: torch.nn.Module, state: dict[str, Any], frame: int) -> torch.Tensor:
    """One tracked frame (encoder, memory attention, decoder, memory encoder), not stored: its mask logits."""
    state["cached_features"] = {}
    with torch.inference_mode():
        _, masks = model._run_single_frame_inference(
            inference_state=state,
            output_dict=state["output_dict_per_obj"][0],
            frame_idx=frame,
            batch_size=1,
            is_init_cond_frame=False,
            point_inputs=None,
            mask_inputs=None,
            reverse=False,
            run_mem_encoder=True,
        )
    return masks


def flops(copies: dict[str, torch.nn.Module], device: torch.device) -> dict[str, dict[str, float]]:
    """GFLOPs of the encoder (one frame) and of a steady-state memory-attention call, per variant."""
    size = int(copies["dense"].image_size)
    frame = (torch.zeros(1, 3, size, size, device=device),)
    with torch.no_grad():
        encoder = {n: count_flops(copies[n].image_encoder, frame).gflops for n in ("dense", "encoder")}
    memory = {n: memory_attention_flops(copies[n])["gflops"] for n in ("dense", "memory")}
    uses = {"dense": ("dense", "dense"), "encoder": ("encoder", "dense"), "memory": ("dense", "memory")}
    uses["both"] = ("encoder", "memory")
    out = {}
    for name, (e, m) in uses.items():
        out[name] = {"encoder": encoder[e], "memory": memory[m], "total": encoder[e] + memory[m]}
    return out


def time_variants(copies: dict[str, torch.nn.Module], state: dict[str, Any], frame: int, args: argparse.Namespace):
    """Interleaved timing of one frame per variant and round: per variant, the median of each stage (s) and
    the last call's mask logits."""
    with ExitStack() as stack:
        timers = {
            name: {
                "encoder": stack.enter_context(EncoderTimer(model.image_encoder)),
                "memory": stack.enter_context(EncoderTimer(model.memory_attention)),
            }
            for name, model in copies.items()
        }
        fns = {name: (lambda model=model: frame_step(model, state, frame)) for name, model in copies.items()}
        result = compare(fns, warmup=args.warmup, repeats=args.rounds)
    medians = {}
    for name in copies:
        frames = result["all_s"][name]
        encoder, memory = (timers[name][k].seconds[args.warmup :] for k in ("encoder", "memory"))
        rest = [f - e - m for f, e, m in zip(frames, encoder, memory, strict=True)]
        medians[name] = {k: statistics.median(v) for k, v in zip(STAGES, (frames, encoder, memory, rest), strict=True)}
    return medians, result["last"]


def mask_iou(masks: torch.Tensor, reference: torch.Tensor) -> float:
    """IoU of two masks' foregrounds (logits > 0); 1 when both are empty."""
    a, b = masks > 0, reference > 0
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def rows(args: argparse.Namespace, medians, last, gflops, memory_frames: int) -> list[dict[str, Any]]:
    """One JSON-able row per variant: the time split (ms), speedups against dense, GFLOPs, mask IoU."""
    dense = medians["dense"]
    machine = f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}, {args.device}"
    out = []
    for name in VARIANTS:
        row = {"model": args.model, "variant": name, "strategy": args.strategy, "r": args.r, "scope": args.scope}
        row |= {"memory_scope": args.memory_scope, "rounds": args.rounds, "memory_frames": memory_frames}
        row |= {f"{stage}_ms": 1000 * medians[name][stage] for stage in STAGES}
        row |= {f"{stage}_speedup": dense[stage] / medians[name][stage] for stage in ("frame", "encoder", "memory")}
        if gflops is not None:
            row |= {f"{k}_gflops": v for k, v in gflops[name].items()}
        row |= {"mask_iou": mask_iou(last[name], last["dense"]), "machine": machine}
        out.append(row)
    return out


def table(rows_: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    head = "| variant | frame ms | encoder ms | memory ms | rest ms | frame × | encoder × | memory × "
    head += "| enc GFLOPs | mem GFLOPs | mask IoU |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows_:
        cells = [r["variant"], *(f"{r[f'{stage}_ms']:.0f}" for stage in STAGES)]
        cells += [f"{r[f'{stage}_speedup']:.2f}x" for stage in ("frame", "encoder", "memory")]
        cells += [f"{r[k]:.4g}" if k in r else "-" for k in ("encoder_gflops", "memory_gflops")]
        lines.append("| " + " | ".join([*cells, f"{r['mask_iou']:.3f}"]) + " |")
    return "\n".join(lines)


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"[vos_speed] {datetime.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)


def main() -> None:
    """Build the predictor, reach the steady state, time the four variants; print (and append to ``--json``)."""
    args = build_parser().parse_args()
    args.model = ALIASES.get(args.model, args.model)
    if args.model not in MODELS or MODELS[args.model].family != "sam2":
        raise SystemExit(f"--model {args.model!r}: choose a research SAM 2 model, e.g. sam2.1_hiera_t or sam2_tiny")
    if args.rounds < 1 or args.warmup < 0:
        raise SystemExit("--rounds must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model = build_model(args.model, target=VIDEO_PREDICTOR, sam_mask_decoder_extra_args=None).to(device)
    with tempfile.TemporaryDirectory() as folder:
        say(f"{args.model}: tracking {model.num_maskmem} frames densely (steady state)")
        state, frame = steady_state(model, args, Path(folder))
        copies = patched_copies(model, args)
        memory_frames = 1 + len(state["output_dict_per_obj"][0]["non_cond_frame_outputs"])
        say(f"timing frame {frame} ({memory_frames} memory frames): {args.warmup} + {args.rounds} rounds x 4 variants")
        medians, last = time_variants(copies, state, frame, args)
    say("counting FLOPs" if not args.no_flops else "FLOPs skipped")
    gflops = None if args.no_flops else flops(copies, device)
    result = rows(args, medians, last, gflops, memory_frames)
    print(table(result))
    for row in result:
        print(json.dumps(row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as out:
            out.writelines(json.dumps(row) + "\n" for row in result)


if __name__ == "__main__":
    main()

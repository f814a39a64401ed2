"""Video evaluation for the harness: one independent record per video, and their exact summary.

How a harness task plugs it in (``dataset=davis|mose|sav|synthetic_video``; ``model=sam2_tiny`` or a SAM 2 /
2.1 model built with ``SAM2VideoPredictor`` as its class)::

    dataset = load_video_dataset(cfg.dataset.name, cfg.data_root, **options)      # bad paths fail here
    # prepare, model unpatched: the reference predictions, written once as PNGs (a cache that survives resume)
    run_vos(model, dataset[i], output_dir=ref_dir)                 # for each i lacking ref_dir / name
    # evaluate, model patched, for each i of the rank's shard:
    item = dataset[i]
    result = run_vos(model, item, output_dir=pred_dir)
    reference = result.masks if baseline else read_predictions(ref_dir, item)
    record = video_record(item, result, index=i, reference=reference)
    # rank 0, with every rank's records:
    summary = summarize_video_records(records)     # J, F, J&F, fidelity_J, encoder_s_per_frame, ...

Or in one call, keeping the unmerged model as a copy: ``evaluate_video_dataset(patched, dataset, indices,
reference_predictor=unpatched_copy(model_before_patching), output_dir=...)``.

Records are plain JSON-serialisable dicts, one per video and independent of each other: resume by skipping
finished indices; merge shards by concatenation (the summary's sums are exact, ``math.fsum``, so it does
not depend on order or on how the videos were sharded). Encoder GFLOPs per frame are the image encoder's:
``count_flops(predictor.image_encoder, torch.zeros(1, 3, predictor.image_size, predictor.image_size))``.
The first video of a process pays one-time costs (allocator, kernels): run one untimed video first when
the latency matters. For bf16 as SAM 2's own tool, call inside ``torch.autocast("cuda", torch.bfloat16)``.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

import tomeplug

from .item import Masks, VideoDataset, VideoItem
from .metrics import mean_scores, score_video
from .vos import VOSResult, fidelity_j, run_vos


def unpatched_copy(predictor: nn.Module) -> nn.Module:
    """A deep copy of ``predictor`` with any tomeplug patch removed: the reference for fidelity."""
    reference = copy.deepcopy(predictor)
    tomeplug.unpatch(reference)
    return reference


def video_record(
    item: VideoItem,
    result: VOSResult,
    index: int | None = None,
    reference: Masks | None = None,
    exclude_void: bool = False,
    skip_first_and_last: bool = True,
) -> dict[str, Any]:
    """Score one run of one video: the record the harness stores for it.

    Args:
        item: the video.
        result: :func:`run_vos`'s output for it.
        index: the item's index in its dataset, recorded for sharding and resume.
        reference: the unmerged model's masks of the same video (its :func:`run_vos` masks, or its PNGs read
            back with :func:`read_predictions`); adds ``fidelity_J`` per object. For the baseline, pass its own.
        exclude_void, skip_first_and_last: scoring options, see :func:`score_video`.
    Returns:
        ``name``, ``index``, ``frames``, ``annotated_frames``; ``objects``: ``{id: {J, F, J&F, frames,
        prompt_frame[, fidelity_J]}}`` (ids as strings); the sequence's ``J``, ``F``, ``J&F`` (mean over its
        objects); ``encoder_calls``, ``encoder_seconds`` (their sum), ``encoder_median_s``, ``seconds``.
    """
    scores = score_video(item, result.masks, exclude_void, skip_first_and_last)
    for obj, score in scores.items():
        score["prompt_frame"] = item.prompts[obj]
    if reference is not None:
        for obj, value in fidelity_j(result.masks, reference, item.prompts).items():
            scores[obj]["fidelity_J"] = value
    sequence = mean_scores(list(scores.values()))
    encoder = result.encoder_seconds
    return {
        "name": item.name,
        "index": index,
        "frames": item.num_frames,
        "annotated_frames": len(item.annotated_frames),
        "objects": {str(obj): score for obj, score in scores.items()},
        "J": sequence["J"],
        "F": sequence["F"],
        "J&F": sequence["J&F"],
        "encoder_calls": len(encoder),
        "encoder_seconds": math.fsum(encoder),
        "encoder_median_s": statistics.median(encoder) if encoder else None,
        "seconds": result.seconds,
    }


def evaluate_video_item(
    predictor: nn.Module,
    item: VideoItem,
    index: int | None = None,
    reference_predictor: nn.Module | None = None,
    output_dir: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run and score one video: :func:`run_vos`, then :func:`video_record`.

    With ``reference_predictor`` (the unmerged model) that runs too, for fidelity. ``options`` go to
    :func:`video_record` (``exclude_void``, ``skip_first_and_last``).
    """
    result = run_vos(predictor, item, output_dir)
    reference = None if reference_predictor is None else run_vos(reference_predictor, item).masks
    return video_record(item, result, index, reference, **options)


def evaluate_video_dataset(
    predictor: nn.Module,
    dataset: VideoDataset | Sequence[VideoItem],
    indices: Iterable[int] | None = None,
    progress: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """:func:`evaluate_video_item` on ``dataset[i]`` for each of ``indices`` (default: all), in order.

    ``options`` go to :func:`evaluate_video_item` (``reference_predictor``, ``output_dir``, ...). A rank
    passes its shard, e.g. ``range(rank, len(dataset), world_size)``.
    """
    from tqdm import tqdm

    indices = list(range(len(dataset)) if indices is None else indices)
    name = getattr(dataset, "name", "video")
    return [
        evaluate_video_item(predictor, dataset[i], index=i, **options)
        for i in tqdm(indices, desc=f"{name} videos", disable=not progress)
    ]


def summarize_video_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Dataset-level numbers from any set of records: exact, whatever their order or sharding.

    Returns ``J``, ``F``, ``J&F`` (means over scored objects, DAVIS's definition), ``objects`` (scored),
    ``unscored_objects``, ``videos``, ``frames``, ``fidelity_J`` (mean over objects, or ``None`` without a
    reference), ``encoder_s_per_frame`` (total encoder seconds / encoder calls) and ``seconds_per_frame``.
    """
    records = list(records)
    objects = [o for r in records for o in r["objects"].values()]
    scores = mean_scores(objects)
    fidelity = [o["fidelity_J"] for o in objects if o.get("fidelity_J") is not None]
    calls, frames = sum(r["encoder_calls"] for r in records), sum(r["frames"] for r in records)
    return {
        **scores,
        "unscored_objects": len(objects) - scores["objects"],
        "videos": len(records),
        "frames": frames,
        "fidelity_J": math.fsum(fidelity) / len(fidelity) if fidelity else None,
        "encoder_s_per_frame": math.fsum(r["encoder_seconds"] for r in records) / calls if calls else None,
        "seconds_per_frame": math.fsum(r["seconds"] for r in records) / frames if frames else None,
    }

"""One video's record (its scores, fidelity and encoder time) and the exact summary of any set of records.

The harness's video task (:mod:`tomeplug_eval.video_task`) runs :func:`~.vos.run_vos` on each video of its
shard, scores the result with :func:`video_record` against the unmerged model's masks, and summarises every
rank's records with :func:`summarize_video_records`. Records are plain JSON-serialisable dicts, one per
video and independent of each other: resume by skipping finished indices; merge shards by concatenation
(the summary's sums are exact, ``math.fsum``, so it does not depend on order or on how the videos were
sharded).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from .item import Masks, VideoItem
from .metrics import mean_scores, score_video
from .vos import VOSResult, fidelity_j


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
        objects); ``encoder_calls``, ``encoder_seconds`` (their sum), ``encoder_median_s``, ``memory_calls``,
        ``memory_seconds`` (the memory attention's forwards and their sum), ``seconds``.
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
        "memory_calls": len(result.memory_seconds),
        "memory_seconds": math.fsum(result.memory_seconds),
        "seconds": result.seconds,
    }


def summarize_video_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Dataset-level numbers from any set of records: exact, whatever their order or sharding.

    Returns ``J``, ``F``, ``J&F`` (means over scored objects, DAVIS's definition), ``objects`` (scored),
    ``unscored_objects``, ``videos``, ``frames``, ``fidelity_J`` (mean over objects, or ``None`` without a
    reference), ``encoder_s_per_frame`` (total encoder seconds / encoder calls), ``seconds_per_frame`` and
    ``split_per_frame``: the wall-clock per frame (total seconds / frames) split into ``encoder_s``,
    ``memory_attention_s`` (``None`` where a record has no memory timing) and ``rest_s`` (everything else:
    frame loading, prompts, decoder, memory encoder), which sum to ``frame_s``.
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
        "split_per_frame": time_split(records, frames),
    }


def time_split(records: list[dict[str, Any]], frames: int) -> dict[str, float | None] | None:
    """Seconds per frame of the encoder, the memory attention and the rest, summing to the whole (None: no frames)."""
    if not frames:
        return None
    whole = math.fsum(r["seconds"] for r in records) / frames
    encoder = math.fsum(r["encoder_seconds"] for r in records) / frames
    timed = all("memory_seconds" in r for r in records)  # records cached before the memory timer have none
    memory = math.fsum(r["memory_seconds"] for r in records) / frames if timed else None
    return {
        "frame_s": whole,
        "encoder_s": encoder,
        "memory_attention_s": memory,
        "rest_s": whole - encoder - (memory or 0.0),
    }

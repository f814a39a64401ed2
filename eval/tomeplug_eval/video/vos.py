"""Semi-supervised VOS with ``SAM2VideoPredictor``: ground-truth masks as prompts, masks propagated to every frame.

The protocol of SAM 2's ``tools/vos_inference.py``: ``init_state`` on the video's JPEG folder, ``add_new_mask``
for each object on its prompt frame, ``propagate_in_video``, a pixel is the object where its logit is > 0.
Objects may overlap in SAM 2's output unless ``predictor.non_overlap_masks`` is set; as the tool, the runner
sets it for DAVIS-layout sets (one palette PNG per frame, where the lowest id wins an overlap) and clears it
for SA-V (one PNG per object), for the duration of the run. A patched predictor (``tomeplug.patch``) merges
tokens in its image encoder (and, patched with ``target="memory_attention"``, in its memory attention); the
forwards of both are timed (:class:`EncoderTimer`), for the per-frame time split.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
import numpy as np
import torch
from torch import nn

from ..image_files import load_image
from .item import Masks, VideoItem
from .metrics import region_j
from .png_io import pack_ids, write_predictions


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class EncoderTimer:
    """Wall-clock seconds of every forward of ``module`` (device-synchronised), while the context is open
    (``None``: nothing to time)."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module, self.seconds, self._start, self._hooks = module, [], 0.0, []

    def _begin(self, *_: Any) -> None:
        _sync()
        self._start = time.perf_counter()

    def _end(self, *_: Any) -> None:
        _sync()
        self.seconds.append(time.perf_counter() - self._start)

    def __enter__(self) -> EncoderTimer:
        if self.module is not None:
            module = self.module
            self._hooks = [module.register_forward_pre_hook(self._begin), module.register_forward_hook(self._end)]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


@attrs.frozen(eq=False)
class VOSResult:
    """The predictions of one video.

    Attributes:
        masks: ``{frame index: {object id: (H, W) bool}}`` for every frame from the first prompt on (an object
            is empty before its own prompt frame).
        encoder_seconds: the time of each image-encoder forward (one per frame and propagation pass).
        seconds: wall-clock of the whole run (frame loading, prompts, propagation).
        memory_seconds: the time of each memory-attention forward (SAM 2: one per frame and object after
            the prompt frame); empty where it was not timed.
    """

    masks: Masks
    encoder_seconds: list[float]
    seconds: float
    memory_seconds: list[float] = attrs.field(factory=list)


def _resolve_overlaps(objects: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The masks as one palette PNG stores them: each pixel to the lowest overlapping id."""
    ids = pack_ids(objects, next(iter(objects.values())).shape)
    return {obj: ids == obj for obj in objects}


def _consolidate(
    logits: dict[int, torch.Tensor], objects: list[int], size: tuple[int, int], non_overlap: bool
) -> dict[int, np.ndarray]:
    """One frame's masks from separate passes' logits.

    An object not yet prompted is empty; with ``non_overlap`` each pixel goes to the highest logit (SAM 2's
    ``_apply_non_overlapping_constraints``).
    """
    stacked = torch.stack([logits.get(obj, torch.full(size, -1024.0)) for obj in objects])  # (objects, H, W)
    if non_overlap:
        best = stacked.argmax(0) == torch.arange(len(objects))[:, None, None]
        stacked = torch.where(best, stacked, stacked.clamp(max=-10.0))
    return {obj: (stacked[k] > 0).numpy() for k, obj in enumerate(objects)}


Propagation = Callable[[int, list[int]], Iterable[tuple[int, list[int], torch.Tensor]]]
"""One propagation pass: ``(start frame, object ids)`` -> per frame ``(frame, object ids, (objects, H, W) logits at
the video's size)``, the objects prompted with their ground-truth masks on the start frame."""


def track_objects(item: VideoItem, propagate: Propagation, non_overlap: bool) -> Masks:
    """Binary masks of every object on every frame from the first prompt on.

    One propagation per prompt frame: an object first seen later gets its own pass from its frame (a pass
    cannot take new objects midway; SAM 2's tool tracks such objects separately too), and the passes are
    combined per frame (with ``non_overlap``, each pixel to the highest logit). In DAVIS 2017 and MOSE every
    object starts on the first frame: one pass.
    """
    groups: dict[int, list[int]] = {}
    for obj, frame in sorted(item.prompts.items()):
        groups.setdefault(frame, []).append(obj)
    separate = len(groups) > 1
    outputs: dict[int, dict[int, Any]] = {}
    for start, objects in sorted(groups.items()):
        for frame, obj_ids, logits in propagate(start, objects):
            kept = logits.float().cpu() if separate else (logits > 0).cpu().numpy()  # (objects, H, W)
            outputs.setdefault(frame, {}).update(zip(obj_ids, kept, strict=True))
    if not separate:
        return outputs
    return {f: _consolidate(o, item.object_ids, item.size, non_overlap) for f, o in outputs.items()}


def _sam2_pass(
    predictor: nn.Module, state: dict[str, Any], item: VideoItem, start: int, objects: list[int]
) -> Iterator[tuple[int, list[int], torch.Tensor]]:
    """One :data:`Propagation` pass of ``SAM2VideoPredictor``."""
    predictor.reset_state(state)
    for obj in objects:
        predictor.add_new_mask(state, frame_idx=start, obj_id=obj, mask=item.masks[start][obj])
    for frame, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=start):
        yield frame, obj_ids, logits[:, 0]


def check_loaded(item: VideoItem, frames: int, size: tuple[int, int], how: str) -> None:
    """An error unless ``how`` (what read the frames) read the item's number of frames at its size."""
    if (frames, tuple(size)) != (item.num_frames, item.size):
        raise ValueError(
            f"video {item.name!r}: {how} read {frames} frames of {tuple(size)} from {item.frame_dir}, "
            f"the item has {item.num_frames} of {item.size}"
        )


def vos_result(
    item: VideoItem,
    masks: Masks,
    encoder_seconds: list[float],
    seconds: float,
    output_dir: Any,
    memory_seconds: list[float] = (),
) -> VOSResult:
    """The run's :class:`VOSResult`: overlaps resolved as one palette PNG stores them (DAVIS layout), the
    predictions written under ``output_dir`` if given."""
    if not item.per_object_png:
        masks = {frame: _resolve_overlaps(objects) for frame, objects in masks.items()}
    if output_dir is not None:
        write_predictions(Path(output_dir), item.name, item.frame_names, masks, item.per_object_png)
    return VOSResult(masks, list(encoder_seconds), seconds, list(memory_seconds))


@contextlib.contextmanager
def sam2_progress_bars(show: bool) -> Iterator[None]:
    """SAM 2's own tqdm bars (frame loading, propagation) shown, or silenced, for the duration.

    Shown, they are transient (``leave=False``): each clears its line when done. Left behind (SAM 2's
    default), every bar nested under the harness's per-video bar would leave its line and a blank one.
    """
    import sam2.sam2_video_predictor
    import sam2.utils.misc
    from tqdm import tqdm

    bar = functools.partial(tqdm, leave=False) if show else functools.partial(tqdm, disable=True)
    with mock.patch.object(sam2.sam2_video_predictor, "tqdm", bar), mock.patch.object(sam2.utils.misc, "tqdm", bar):
        yield


def _init_state(predictor: nn.Module, item: VideoItem, offload_video_to_cpu: bool) -> dict[str, Any]:
    """SAM 2's ``init_state`` on the item's frames; a frame it cannot decode is named (SAM 2 does not say which)."""
    try:
        return predictor.init_state(str(item.frame_dir), offload_video_to_cpu=offload_video_to_cpu)
    except (OSError, SyntaxError):
        for frame in item.frame_paths:
            load_image(frame)  # raises ImageFileError naming the first frame that does not decode
        raise


def run_vos(
    predictor: nn.Module,
    item: VideoItem,
    output_dir: str | Path | None = None,
    non_overlap: bool | None = None,
    offload_video_to_cpu: bool = False,
    progress: bool = True,
) -> VOSResult:
    """Segment every object of ``item`` through the video with a (possibly patched) ``SAM2VideoPredictor``.

    Args:
        predictor: a ``SAM2VideoPredictor``.
        item: the video; its frame folder is what ``init_state`` reads.
        output_dir: if given, write the predictions there as ``<output_dir>/<name>/<frame>.png`` (palette PNG of
            ids) or, for SA-V items, ``<output_dir>/<name>/<obj:03d>/<frame>.png``.
        non_overlap: SAM 2's ``non_overlap_masks`` for this run; default: on unless ``item.per_object_png``.
        offload_video_to_cpu: keep the decoded frames on the CPU (``init_state``'s option).
        progress: show SAM 2's own progress bars (frame loading, propagation; transient).
    """
    non_overlap = not item.per_object_png if non_overlap is None else non_overlap
    saved, predictor.non_overlap_masks = predictor.non_overlap_masks, non_overlap
    start = time.perf_counter()
    try:
        timers = EncoderTimer(predictor.image_encoder), EncoderTimer(getattr(predictor, "memory_attention", None))
        with timers[0] as timer, timers[1] as memory, torch.inference_mode(), sam2_progress_bars(progress):
            state = _init_state(predictor, item, offload_video_to_cpu)
            size = (state["video_height"], state["video_width"])
            check_loaded(item, state["num_frames"], size, "init_state")
            masks = track_objects(item, functools.partial(_sam2_pass, predictor, state, item), non_overlap)
        _sync()
    finally:
        predictor.non_overlap_masks = saved
    return vos_result(item, masks, timer.seconds, time.perf_counter() - start, output_dir, memory.seconds)


def fidelity_j(pred: Masks, reference: Masks, prompts: dict[int, int]) -> dict[int, float | None]:
    """Per object, the mean J of ``pred`` against ``reference`` (e.g. the unpatched model's predictions).

    Averaged over the frames both predict after the object's prompt frame (on it both return the prompt);
    ``None`` for an object with no such frame.
    """
    scores: dict[int, float | None] = {}
    for obj, prompt in sorted(prompts.items()):
        frames = sorted(f for f in pred.keys() & reference.keys() if f > prompt)
        values = [region_j(pred[f][obj], reference[f][obj]) for f in frames]
        scores[obj] = math.fsum(values) / len(values) if values else None
    return scores

"""Semi-supervised VOS with transformers' ``Sam2VideoModel``: :func:`.vos.run_vos`'s protocol, the model card's flow.

The model's own ``Sam2VideoProcessor`` resizes and normalises the frames into an inference session
(``init_video_session``) and resizes each object's first ground-truth mask to the model's input as its prompt
(``add_inputs_to_inference_session(input_masks=...)``, bilinear with antialiasing, then >= 0.5, as SAM 2's
``add_new_mask``); ``propagate_in_video_iterator`` tracks the objects from their prompt frame to the end, and
``post_process_masks`` upsamples each frame's logits to the video's size (with ``non_overlap``: each pixel to
the highest logit, as SAM 2's ``non_overlap_masks``); a pixel is the object where its logit is > 0. Objects
prompted on a later frame get their own pass, combined as in :func:`.vos.track_objects`. The encoder timed per
frame is the model's ``vision_encoder`` (Hiera and its FPN neck), the part token merging changes.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn

from ..image_files import load_image
from .item import VideoItem
from .vos import EncoderTimer, VOSResult, _sync, check_loaded, track_objects, vos_result


def hf_video_input_size(model: nn.Module) -> int:
    """The square input size (pixels) of a ``Sam2VideoModel``."""
    size = model.config.image_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def hf_video_processor(size: int) -> Any:
    """``Sam2VideoProcessor`` for square ``size`` inputs, built offline from its processors' defaults."""
    import transformers

    square = {"height": size, "width": size}
    return transformers.Sam2VideoProcessor(
        image_processor=transformers.Sam2ImageProcessor(size=square),
        video_processor=transformers.Sam2VideoVideoProcessor(size=square),
    )


@contextlib.contextmanager
def transient_bars() -> Iterator[None]:
    """transformers' propagation bar, when shown, cleared when done (not left under the harness's bar)."""
    from tqdm import tqdm
    from transformers.models.sam2_video import modeling_sam2_video

    with mock.patch.object(modeling_sam2_video, "tqdm", functools.partial(tqdm, leave=False)):
        yield


def _hf_pass(
    model: nn.Module,
    processor: Any,
    session: Any,
    item: VideoItem,
    start: int,
    objects: list[int],
    *,
    non_overlap: bool,
    progress: bool,
) -> Iterator[tuple[int, list[int], torch.Tensor]]:
    """One :data:`.vos.Propagation` pass: the session cleared, ``objects`` prompted with their masks on ``start``."""
    session.reset_tracking_data()  # the objects and outputs of the previous pass; the frames stay
    masks = [item.masks[start][obj] for obj in objects]
    processor.add_inputs_to_inference_session(session, frame_idx=start, obj_ids=list(objects), input_masks=masks)
    for out in model.propagate_in_video_iterator(session, start_frame_idx=start, show_progress_bar=progress):
        logits = processor.post_process_masks(
            [out.pred_masks], [list(item.size)], binarize=False, apply_non_overlapping_constraints=non_overlap
        )[0]  # (objects, 1, H, W)
        yield out.frame_idx, list(out.object_ids), logits[:, 0]


def run_hf_vos(
    model: nn.Module,
    item: VideoItem,
    output_dir: str | Path | None = None,
    non_overlap: bool | None = None,
    progress: bool = True,
) -> VOSResult:
    """Segment every object of ``item`` through the video with a (possibly patched) ``Sam2VideoModel``.

    Args:
        model: a transformers ``Sam2VideoModel`` (its ``config.image_size`` is the processor's input size).
        item: the video; its frames are read with :func:`~tomeplug_eval.image_files.load_image` (a damaged one
            is named).
        output_dir: if given, write the predictions there, as :func:`.vos.run_vos` does.
        non_overlap: one object per pixel within a pass; default: on unless ``item.per_object_png``.
        progress: show transformers' propagation bar (transient).
    """
    non_overlap = not item.per_object_png if non_overlap is None else non_overlap
    processor = hf_video_processor(hf_video_input_size(model))
    device = next(model.parameters()).device
    start = time.perf_counter()
    timers = EncoderTimer(model.vision_encoder), EncoderTimer(model.memory_attention)
    with timers[0] as timer, timers[1] as memory, torch.inference_mode(), transient_bars():
        frames = [np.asarray(load_image(path).convert("RGB")) for path in item.frame_paths]
        session = processor.init_video_session(video=frames, inference_device=device)
        size = (int(session.video_height), int(session.video_width))
        check_loaded(item, session.num_frames, size, "Sam2VideoProcessor")
        passes = functools.partial(
            _hf_pass, model, processor, session, item, non_overlap=non_overlap, progress=progress
        )
        masks = track_objects(item, passes, non_overlap)
    _sync()
    return vos_result(item, masks, timer.seconds, time.perf_counter() - start, output_dir, memory.seconds)

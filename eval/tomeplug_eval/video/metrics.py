"""Video object segmentation metrics as the DAVIS 2017 benchmark defines them: J, F and J&F.

Per frame and object (``davis2017-evaluation``'s ``db_eval_iou`` and ``f_measure``):

- J, region similarity: |pred ∩ gt| / |pred ∪ gt|, 1.0 when both are empty.
- F, boundary F-measure: each mask's one-pixel boundary map (``seg2bmap``: a pixel differing from its right,
  lower or lower-right neighbour), each dilated by a disk of radius ``ceil(0.008 × image diagonal)`` pixels
  (8 at 480×854); precision = share of predicted boundary pixels within the dilated true boundary, recall
  the converse, F = 2PR / (P + R). An empty predicted boundary with a true one gives P=1, R=0; the converse
  P=0, R=1; both empty P=R=1; F is 0 when P + R = 0.

Frames scored (the semi-supervised protocol of the DAVIS evaluator and SA-V's ``sav_evaluator``): the
annotated frames without the first and the last one, and without any frame up to the object's prompt
frame (its ground truth was the input). Per object, J and F are means over those frames; J&F = (J + F) / 2.
A dataset's J (F) is the mean over all objects of all sequences, and its J&F is (J + F) / 2.

Void (255) pixels: the DAVIS evaluator sets them to background before scoring, and the void mask it then
derives is always empty, so void pixels count as background. That is the default here; ``exclude_void=True``
drops them from both masks instead (what ``db_eval_iou``'s ``void_pixels`` argument was meant for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from .item import Masks, VideoItem

BOUND_TH = 0.008


def region_j(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of two (H, W) masks, ignoring ``void`` pixels; 1.0 when the union is empty."""
    keep = True if void is None else ~void
    union = np.count_nonzero((pred | gt) & keep)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt & keep) / union


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """The dilation radius: ``bound_th`` pixels if it is at least 1, else ``ceil(bound_th × diagonal)``."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*shape)))


def disk(radius: int) -> np.ndarray:
    """A (2r+1)² uint8 disk: the offsets (dx, dy) with dx² + dy² ≤ r² (``skimage.morphology.disk``)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The one-pixel boundary of an (H, W) mask, offset half a pixel towards the origin (``seg2bmap``)."""
    right, below, diag = (np.zeros_like(mask) for _ in range(3))
    right[:, :-1], below[:-1, :], diag[:-1, :-1] = mask[:, 1:], mask[1:, :], mask[1:, 1:]
    edges = (mask ^ right) | (mask ^ below) | (mask ^ diag)
    edges[-1, :] = mask[-1, :] ^ right[-1, :]  # last row and column compare along the border only
    edges[:, -1] = mask[:, -1] ^ below[:, -1]
    edges[-1, -1] = False
    return edges


def boundary_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH) -> float:
    """F of two (H, W) masks (see the module docstring)."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    pred_edges, gt_edges = boundary_map(pred), boundary_map(gt)
    kernel = disk(boundary_radius(pred.shape, bound_th))
    pred_near = cv2.dilate(pred_edges.astype(np.uint8), kernel) > 0
    gt_near = cv2.dilate(gt_edges.astype(np.uint8), kernel) > 0
    n_pred, n_gt = np.count_nonzero(pred_edges), np.count_nonzero(gt_edges)
    if n_pred == 0 or n_gt == 0:
        precision, recall = float(n_pred == 0), float(n_gt == 0)
    else:
        precision = np.count_nonzero(pred_edges & gt_near) / n_pred
        recall = np.count_nonzero(gt_edges & pred_near) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def scored_frames(annotated: Sequence[int], prompt_frame: int, skip_first_and_last: bool = True) -> list[int]:
    """The frames an object is scored on: annotated ones after its prompt, less the video's first and last."""
    frames = sorted(annotated)
    if skip_first_and_last:
        frames = frames[1:-1]
    return [f for f in frames if f > prompt_frame]


def score_video(
    item: VideoItem,
    predictions: Masks,
    exclude_void: bool = False,
    skip_first_and_last: bool = True,
    bound_th: float = BOUND_TH,
) -> dict[int, dict[str, float | int | None]]:
    """J, F and J&F of every object of ``item``, against ``predictions`` (frame -> object -> mask).

    Returns ``{object id: {"J", "F", "J&F", "frames"}}``; the scores are ``None`` for an object with no frame
    to score (e.g. MOSE's validation set, annotated on its first frame only). A scored frame or object
    missing from the predictions is an error.
    """
    scores: dict[int, dict[str, float | int | None]] = {}
    for obj, prompt in sorted(item.prompts.items()):
        js, fs = [], []
        for frame in scored_frames(item.annotated_frames, prompt, skip_first_and_last):
            if obj not in predictions.get(frame, {}):
                raise KeyError(f"video {item.name!r}: no prediction for object {obj} on frame {frame}")
            pred, gt = predictions[frame][obj], item.masks[frame][obj]
            void = item.void.get(frame) if exclude_void else None
            js.append(region_j(pred, gt, void))
            fs.append(boundary_f(pred, gt, void, bound_th))
        j, f = (math.fsum(v) / len(v) if v else None for v in (js, fs))
        scores[obj] = {"J": j, "F": f, "J&F": None if j is None else (j + f) / 2, "frames": len(js)}
    return scores


def mean_scores(objects: Sequence[Mapping[str, float | int | None]]) -> dict[str, float | int | None]:
    """Dataset-level J, F and J&F: means over the objects that were scored (exact, order-free sums)."""
    scored = [o for o in objects if o["J"] is not None]
    j = math.fsum(o["J"] for o in scored) / len(scored) if scored else None
    f = math.fsum(o["F"] for o in scored) / len(scored) if scored else None
    return {"J": j, "F": f, "J&F": None if j is None else (j + f) / 2, "objects": len(scored)}

"""Segmentation metrics (mask IoU, boundary IoU) and fidelity to the unmerged model (mask IoU, embedding cosine).

Masks are (H, W) arrays taken as booleans (any non-zero value is foreground); threshold logits and 0..255
ground truths before calling (the loaders already give bool masks). Conventions for empty masks: both empty
gives 1.0 (perfect agreement on "nothing"), one empty gives 0.0; HQ-SAM's code divides 0 by 0 there.

Boundary IoU follows Cheng et al., "Boundary IoU" (CVPR 2021) and HQ-SAM's ``misc.boundary_iou``: a mask's
boundary is the mask minus its erosion by ``d = max(1, round(dilation_ratio * image_diagonal))`` pixels (a 3×3
erosion applied d times to the mask padded by one empty pixel, so that the image border counts as an edge);
the score is the IoU of the two boundaries, each lying inside its own mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np
import torch


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"expected two (H, W) masks of one shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two (H, W) masks; 1.0 when both are empty."""
    return _iou(*_pair(pred, gt))


def boundary_width(shape: tuple[int, int], dilation_ratio: float = 0.02) -> int:
    """The boundary width d in pixels: ``max(1, round(dilation_ratio × image diagonal))``."""
    return max(1, int(round(dilation_ratio * math.hypot(shape[0], shape[1]))))


def mask_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """The (H, W) bool inner boundary band of a mask: the pixels within d of its edge or of the image border."""
    mask = np.asarray(mask) != 0
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=boundary_width((h, w), dilation_ratio))
    return mask & (eroded[1 : h + 1, 1 : w + 1] == 0)


def boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU of two (H, W) masks (see the module docstring); 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    return _iou(mask_boundary(pred, dilation_ratio), mask_boundary(gt, dilation_ratio))


def embedding_cosine(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Fidelity: per-image cosine similarity of two (B, ...) batches of embeddings, each image flattened.

    Computed in float64. Returns a (B,) float64 array; two all-zero embeddings give 1.0, one gives 0.0.
    """
    a, b = (
        (x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64))
        for x in (a, b)
    )
    if a.shape != b.shape or a.ndim < 1:
        raise ValueError(f"embedding_cosine: expected two (B, ...) arrays of one shape, got {a.shape} and {b.shape}")
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    cos = np.divide(np.einsum("bi,bi->b", a, b), norms, out=np.zeros(len(a)), where=norms > 0)
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


class MeanAccumulator:
    """Per-object values of named metrics, averaged on demand.

    Means are exact-rounded sums (``math.fsum``) over all values, so they do not depend on the order in which
    values arrive: the records of N ranks, gathered and added in any order, give exactly the means of one run.
    """

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, **metrics: float) -> None:
        """Record one object's value of each named metric, e.g. ``add(iou=0.9, biou=0.7)``."""
        for name, value in metrics.items():
            self.values.setdefault(name, []).append(float(value))

    def extend(self, name: str, values: Iterable[float]) -> None:
        """Record many objects' values of one metric."""
        self.values.setdefault(name, []).extend(float(v) for v in values)

    def count(self, name: str) -> int:
        """How many values of ``name`` were recorded."""
        return len(self.values.get(name, []))

    def mean(self, name: str) -> float:
        """The mean of ``name``; an error if nothing was recorded for it."""
        if not self.values.get(name):
            raise KeyError(f"no values recorded for metric {name!r}; recorded: {sorted(self.values)}")
        return math.fsum(self.values[name]) / len(self.values[name])

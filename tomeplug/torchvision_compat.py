"""Fallback for torchvision wheels whose compiled ops do not load under the installed torch build.

A torchvision wheel built against another torch (e.g. a CUDA build next to a CPU torch) cannot load its
C extension, and ``import torchvision`` then fails in ``torchvision/_meta_registrations.py`` with
``RuntimeError: operator torchvision::nms does not exist``. :func:`ensure_torchvision` detects exactly
that failure, registers pure-PyTorch ``torchvision::nms`` / ``torchvision::qnms`` ops and re-imports
torchvision, so that ``timm``, ``segment_anything``, ``segment_anything_hq`` and ``sam2`` import and
their automatic mask generators (``batched_nms``) work. Other compiled ops (roi_align, ...) stay missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import warnings

import torch

_MISSING_OP_ERROR = re.compile(r"operator torchvision::q?nms does not exist")
_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# The Library object must stay alive: its registrations are removed when it is garbage collected.
_library: torch.library.Library | None = None
_fallback_active = False


def pairwise_box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """IoU matrix of (N, 4) boxes in (x1, y1, x2, y2); 0 where the union is empty (no NaN)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    inter = size[..., 0] * size[..., 1]
    union = areas[:, None] + areas[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS as torchvision defines it; returns int64 indices of kept boxes by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppresses = pairwise_box_iou(boxes[order]) > iou_threshold
    removed = torch.zeros(order.numel(), dtype=torch.bool, device=boxes.device)
    kept = []
    for i in range(order.numel()):
        if not removed[i]:
            kept.append(i)
            removed |= suppresses[i]
    return order[torch.tensor(kept, dtype=torch.int64, device=boxes.device)]


def _qnms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return nms(boxes.dequantize(), scores.dequantize(), iou_threshold)


def _register_fallback_ops() -> None:
    global _library
    if _library is not None:
        return
    library = torch.library.Library("torchvision", "DEF")
    for name, fn in (("nms", nms), ("qnms", _qnms)):
        library.define(_OP_SCHEMAS[name])
        library.impl(name, fn, "CompositeExplicitAutograd")
    _library = library


def _forget_torchvision_modules() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> bool:
    """Make ``import torchvision`` work when its compiled ops cannot load under this torch build.

    Returns True when the pure-PyTorch nms fallback is (or already was) in effect; False when
    torchvision imports normally, is already imported without the fallback, or is not installed.
    Warns once, on the call that installs the fallback. Other import errors propagate unchanged.
    """
    global _fallback_active
    if _fallback_active or "torchvision" in sys.modules:
        return _fallback_active
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
        return _fallback_active  # True where the import hook (tomeplug._torchvision_hook) applied the fallback
    except RuntimeError as error:
        if not _MISSING_OP_ERROR.search(str(error)):
            raise
    _forget_torchvision_modules()
    _register_fallback_ops()
    importlib.import_module("torchvision")
    boxes_module = importlib.import_module("torchvision.ops.boxes")
    boxes_module._assert_has_ops = lambda: None
    _fallback_active = True
    warnings.warn(
        "torchvision's compiled ops did not load under this torch build "
        f"(torch {torch.__version__}); registered a pure-PyTorch torchvision::nms/qnms so torchvision "
        "imports and nms/batched_nms work. Other compiled torchvision ops (roi_align, deform_conv2d, ...) "
        "stay unavailable.",
        RuntimeWarning,
        stacklevel=2,
    )
    return True

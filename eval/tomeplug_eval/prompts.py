"""Prompts from ground truth, and the input resizing of the published protocol.

Box convention: ``[x0, y0, x1, y1]`` in pixel indices of the (resized) image, **inclusive** on both ends:
``x1`` is the column of the mask's right-most pixel, not one past it. This is what HQ-SAM's evaluation feeds
SAM (``misc.masks_to_boxes``, computed on the 1024×1024 label) and what SAM's own ``batched_mask_to_box``
returns; SAM's prompt encoder takes such XYXY pixel coordinates.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from .data.item import ImageItem


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """The tight inclusive box ``[x0, y0, x1, y1]`` (float32) around a non-empty (H, W) mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"box_from_mask: expected an (H, W) mask, got shape {mask.shape}")
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise ValueError("box_from_mask: the mask is empty; no box can be made")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def longest_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(H', W') with the longer side scaled to ``long_side`` and rounded as SAM's ResizeLongestSide does."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # nearest-exact: each output pixel takes the input pixel under its centre (no cv2 half-pixel offset)
    resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized.astype(bool)


def resize_item(item: ImageItem, size: int = 1024, keep_aspect: bool = False) -> ImageItem:
    """The item resized for the model input; masks resized with nearest neighbour, stay exact booleans.

    Args:
        item: the item at its original resolution (keep it: metrics are computed there, as HQ-SAM does).
        size: the target side.
        keep_aspect: False is HQ-SAM's protocol, a stretch to ``size × size`` (bilinear, no antialiasing, as
            its ``F.interpolate``); True is SAM's ``ResizeLongestSide``: the longer side becomes ``size``
            (bilinear through Pillow, as SAM's ``apply_image``), the caller pads to a square.
    """
    h, w = item.size
    if keep_aspect:
        shape = longest_side_shape(h, w, size)
        image = np.asarray(Image.fromarray(item.image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
    else:
        shape = (size, size)
        image = cv2.resize(item.image, (size, size), interpolation=cv2.INTER_LINEAR)
    return ImageItem(name=item.name, image=image, masks=[_resize_mask(m, shape) for m in item.masks])

"""The HQ-SAM evaluation sets (DIS5K DIS-VD, ThinObject5K test, COIFT, HRSOD) in HQ-SAM's folder layout.

``data_root`` is the folder HQ-SAM calls ``data/``: it holds ``DIS5K/`` and ``thin_object_detection/``. Images
are ``<stem>.jpg`` in the images folder, ground truths ``<stem>.png`` in the masks folder (as in HQ-SAM's
``train.py``). Like HQ-SAM, the image list drives the pairing: masks without an image are ignored, an image
without a mask is an error.

Each image is one object, the whole foreground, as HQ-SAM evaluates. A ground-truth PNG is read as HQ-SAM
reads it (first channel of a multi-channel PNG) and thresholded at ``> 128``, the threshold of HQ-SAM's
``misc.mask_iou``, ``misc.boundary_iou`` and ``misc.masks_to_boxes``: the mask, its box prompt and its
metrics agree with the published numbers.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np

from ..image_files import load_image
from .item import ImageDataset, ImageItem, file_stamps

GT_THRESHOLD = 128  # foreground: gt value > 128 (HQ-SAM's misc.py)


@attrs.frozen
class HQSAMLayout:
    """Where one HQ-SAM evaluation set lives under ``data_root``."""

    title: str
    images: str
    masks: str
    image_ext: str = ".jpg"
    mask_ext: str = ".png"


LAYOUTS: dict[str, HQSAMLayout] = {
    "dis": HQSAMLayout("DIS5K", "DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt"),
    "thin": HQSAMLayout(
        "ThinObject5K",
        "thin_object_detection/ThinObject5K/images_test",
        "thin_object_detection/ThinObject5K/masks_test",
    ),
    "coift": HQSAMLayout("COIFT", "thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks"),
    "hrsod": HQSAMLayout("HRSOD", "thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255"),
}


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grey images repeated to three channels)."""
    return np.asarray(load_image(path).convert("RGB"))


def read_gt_mask(path: Path) -> np.ndarray:
    """A ground-truth PNG as an (H, W) bool mask: first channel, foreground where the value is > 128."""
    img = load_image(path)
    if img.mode == "1":
        return np.asarray(img).astype(bool)
    if img.mode in ("P", "PA"):
        img = img.convert("RGB")  # palette indices are not intensities
    values = np.asarray(img)
    if values.ndim == 3:
        values = values[..., 0]
    return values > GT_THRESHOLD


def _expected(layout: HQSAMLayout, root: Path) -> str:
    return (
        f"expected {root / layout.images} with {layout.image_ext} images and {root / layout.masks} with "
        f"{layout.mask_ext} masks of the same stem (HQ-SAM layout)"
    )


def _folder(layout: HQSAMLayout, root: Path, rel: str, what: str) -> Path:
    path = root / rel
    if not path.is_dir():
        raise FileNotFoundError(f"{layout.title} {what} folder not found: {path}; {_expected(layout, root)}")
    return path


class HQSAMDataset(ImageDataset):
    """One HQ-SAM evaluation set, listed at construction and decoded lazily per index (sorted by stem).

    Args:
        key: ``"dis"``, ``"thin"``, ``"coift"`` or ``"hrsod"`` (see :data:`LAYOUTS`).
        data_root: HQ-SAM's ``data/`` folder.
    """

    def __init__(self, key: str, data_root: str | Path) -> None:
        if key not in LAYOUTS:
            raise ValueError(f"unknown HQ-SAM set {key!r}; known: {', '.join(LAYOUTS)}")
        self.layout = layout = LAYOUTS[key]
        self.name = key
        self.root = root = Path(data_root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data_root not found: {root}; {_expected(layout, root)}")
        image_dir = _folder(layout, root, layout.images, "images")
        mask_dir = _folder(layout, root, layout.masks, "masks")
        images = sorted(p for p in image_dir.iterdir() if p.name.endswith(layout.image_ext) and p.is_file())
        if not images:
            found = sorted({p.suffix for p in image_dir.iterdir()}) or ["nothing"]
            raise FileNotFoundError(
                f"{layout.title}: no {layout.image_ext} images in {image_dir} (found {', '.join(found)}); "
                f"{_expected(layout, root)}"
            )
        self._pairs = [(p, mask_dir / (p.name[: -len(layout.image_ext)] + layout.mask_ext)) for p in images]
        missing = [(img, gt) for img, gt in self._pairs if not gt.is_file()]
        if missing:
            shown = "; ".join(f"{img.name} -> {gt}" for img, gt in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(
                f"{layout.title}: {len(missing)} image(s) without a mask: {shown}{more}; {_expected(layout, root)}"
            )

    def __len__(self) -> int:
        return len(self._pairs)

    def identity(self, index: int) -> list[list[object]]:
        """The image's and the mask's path under ``data_root``, size and modification time."""
        return file_stamps(self._pairs[index], self.root)

    def _load(self, index: int) -> ImageItem:
        image_path, mask_path = self._pairs[index]
        image, mask = read_rgb(image_path), read_gt_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"{self.layout.title}: image {image_path} is {image.shape[:2]} but its mask {mask_path} is {mask.shape}"
            )
        if not mask.any():
            raise ValueError(f"{self.layout.title}: mask {mask_path} has no foreground (no value > {GT_THRESHOLD})")
        return ImageItem(name=image_path.name[: -len(self.layout.image_ext)], image=image, masks=[mask])

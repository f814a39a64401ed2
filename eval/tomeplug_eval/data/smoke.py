"""Real photos with real masks, extracted at run time from installed distributions (nothing is committed).

- ``quokka``: the photo and its outline polygon shipped in the ``imgaug`` 0.4.0 distribution (installed as data
  only, never imported); the polygon is rasterised into one mask.
- ``nuclei``: the 2-D fluorescence image and instance label mask shipped in the ``stardist`` distribution,
  included only where those files are installed; one object per nucleus (the largest ``max_nuclei``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from pathlib import Path

import cv2
import numpy as np

from ..image_files import load_image
from .hqsam_layout import read_rgb
from .item import ImageItem, LazyDataset, file_stamps

QUOKKA_IMAGE, QUOKKA_POLYGON = "imgaug/quokka.jpg", "imgaug/quokka_annotations.json"
NUCLEI_IMAGE, NUCLEI_LABELS = "stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif"


def locate(distribution: str, relative: str) -> Path | None:
    """The path of a file installed by a distribution, or None if the distribution or the file is absent."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def quokka_files() -> tuple[Path, Path]:
    """The quokka photo and its annotation file; an error saying how to install them if they are missing."""
    image_path, polygon_path = locate("imgaug", QUOKKA_IMAGE), locate("imgaug", QUOKKA_POLYGON)
    if image_path is None or polygon_path is None:
        raise FileNotFoundError(
            f"smoke set: {QUOKKA_IMAGE} and {QUOKKA_POLYGON} not found in an installed imgaug distribution; "
            "install its data with `pip install --no-deps imgaug==0.4.0` (it is never imported)"
        )
    return image_path, polygon_path


def load_quokka() -> ImageItem:
    """The quokka photo with its annotated outline as one mask."""
    image_path, polygon_path = quokka_files()
    image = read_rgb(image_path)
    annotation = json.loads(polygon_path.read_text())
    points = np.array([[p["x"], p["y"]] for p in annotation["polygons"][0]["keypoints"]], np.float64)
    mask = cv2.fillPoly(np.zeros(image.shape[:2], np.uint8), [points.round().astype(np.int32)], 1, cv2.LINE_8)
    return ImageItem(name="quokka", image=image, masks=[mask.astype(bool)])


def read_array(path: Path) -> np.ndarray:
    """A TIFF (or any image) as a numpy array, through tifffile when installed, else Pillow."""
    try:
        import tifffile
    except ImportError:
        return np.asarray(load_image(path))
    return tifffile.imread(path)


def to_uint8(values: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Scale intensities to uint8 between two percentiles (clipped); a flat image becomes all zeros."""
    values = values.astype(np.float64)
    lo, hi = np.percentile(values, [low, high])
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def load_nuclei(image_path: Path, labels_path: Path, max_nuclei: int | None = 16, min_area: int = 16) -> ImageItem:
    """A grey nuclei image (repeated to RGB) with one mask per labelled nucleus, largest first."""
    values, labels = read_array(image_path), read_array(labels_path)
    if values.ndim != 2 or labels.shape != values.shape:
        raise ValueError(f"nuclei: need a 2-D image and a label mask of one shape, got {values.shape}, {labels.shape}")
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    order = sorted((-int(a), int(i)) for i, a in zip(ids, areas, strict=True) if a >= min_area)  # largest, then id
    chosen = [i for _, i in order[:max_nuclei]]
    if not chosen:
        raise ValueError(f"nuclei: no labelled object of at least {min_area} pixels in {labels_path}")
    image = np.repeat(to_uint8(values)[..., None], 3, axis=2)
    return ImageItem(name="nuclei", image=image, masks=[labels == i for i in chosen])


def smoke_dataset(max_nuclei: int | None = 16) -> LazyDataset:
    """The smoke set: the quokka, plus stardist's nuclei where the stardist distribution is installed."""
    loaders, identities = [load_quokka], [file_stamps(quokka_files())]  # a missing imgaug fails here
    nuclei_image, nuclei_labels = locate("stardist", NUCLEI_IMAGE), locate("stardist", NUCLEI_LABELS)
    if nuclei_image is not None and nuclei_labels is not None:
        loaders.append(functools.partial(load_nuclei, nuclei_image, nuclei_labels, max_nuclei))
        identities.append({"files": file_stamps([nuclei_image, nuclei_labels]), "max_nuclei": max_nuclei})
    return LazyDataset("smoke", loaders, identities)

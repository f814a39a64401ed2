"""Reading frames and annotation PNGs, and writing predictions in the DAVIS or SA-V layout.

DAVIS-layout annotations are palette (mode ``P``) PNGs whose pixel values are object ids: 0 background,
1..254 objects, 255 void (an "ignore" label some sets use). Grey (mode ``L``) PNGs holding ids are accepted
too. SA-V annotations are one binary PNG per object and frame: any non-zero value is the object.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ..image_files import load_image
from .item import Masks, VideoItem

VOID = 255
FRAME_EXTS = (".jpg", ".jpeg", ".JPG", ".JPEG")  # what SAM2VideoPredictor.init_state reads


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC palette (256 RGB triples, flat): id bits spread over the colour channels."""
    palette = []
    for i in range(256):
        rgb = [0, 0, 0]
        for shift in range(8):
            for channel in range(3):
                rgb[channel] |= ((i >> (3 * shift + channel)) & 1) << (7 - shift)
        palette += rgb
    return palette


def list_frames(folder: Path, what: str) -> list[Path]:
    """The JPEG frames of ``folder`` in frame order; their stems must be frame numbers (``00000.jpg``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: frame folder not found: {folder}")
    frames = [p for p in folder.iterdir() if p.suffix in FRAME_EXTS and p.is_file()]
    if not frames:
        raise FileNotFoundError(f"{what}: no .jpg frames in {folder}")
    bad = [p.name for p in frames if not p.stem.isdigit()]
    if bad:
        raise ValueError(f"{what}: frames must be named by their number (00000.jpg), got {', '.join(sorted(bad)[:3])}")
    return sorted(frames, key=lambda p: int(p.stem))


def frame_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header."""
    with Image.open(path) as img:
        return img.height, img.width


def read_id_png(path: Path) -> np.ndarray:
    """A DAVIS-layout annotation as an (H, W) uint8 array of object ids (255 = void)."""
    img = load_image(path)
    if img.mode not in ("P", "L"):
        raise ValueError(
            f"annotation {path} is a mode {img.mode!r} PNG; expected a palette (P) PNG whose values are "
            "object ids (0 background, 255 void)"
        )
    return np.asarray(img, dtype=np.uint8).copy()


def read_binary_png(path: Path) -> np.ndarray:
    """An SA-V per-object annotation as an (H, W) bool mask (non-zero is the object)."""
    img = load_image(path)
    if img.mode not in ("P", "L", "1"):
        raise ValueError(f"annotation {path} is a mode {img.mode!r} PNG; expected a one-object binary PNG")
    values = np.asarray(img)
    if len(np.unique(values)) > 2:
        raise ValueError(f"annotation {path} holds more than one object value; SA-V masks are one object per PNG")
    return values != 0


def pack_ids(masks: Mapping[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Per-object masks as one (H, W) uint8 id map; where objects overlap the lowest id wins (as SAM 2's tool)."""
    ids = np.zeros(size, np.uint8)
    for obj in sorted(masks, reverse=True):
        if not 0 < obj < VOID:
            raise ValueError(f"object id {obj} cannot be stored in a palette PNG (ids 1..254)")
        ids[masks[obj]] = obj
    return ids


def write_palette_png(path: Path, ids: np.ndarray) -> None:
    """Write an (H, W) uint8 id map as a palette PNG with the DAVIS palette."""
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(davis_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_predictions(
    out_dir: Path, name: str, frame_names: list[str], masks: Mapping[int, Mapping[int, np.ndarray]], per_object: bool
) -> None:
    """Write predicted masks under ``out_dir/name`` as the evaluators read them.

    DAVIS layout: ``<out>/<name>/<frame>.png``, one palette PNG of object ids per frame. SA-V layout
    (``per_object``): ``<out>/<name>/<obj:03d>/<frame>.png``, one 0/1 palette PNG per object and frame.
    """
    for frame, objects in masks.items():
        if per_object:
            for obj, mask in objects.items():
                write_palette_png(out_dir / name / f"{obj:03d}" / f"{frame_names[frame]}.png", mask.astype(np.uint8))
        else:
            size = next(iter(objects.values())).shape
            write_palette_png(out_dir / name / f"{frame_names[frame]}.png", pack_ids(objects, size))


def read_predictions(out_dir: str | Path, item: VideoItem) -> Masks:
    """The masks :func:`write_predictions` wrote for ``item`` under ``out_dir``, for every frame found."""
    folder, objects = Path(out_dir) / item.name, item.object_ids
    masks: Masks = {}
    for frame, stem in enumerate(item.frame_names):
        if item.per_object_png:
            paths = {obj: folder / f"{obj:03d}" / f"{stem}.png" for obj in objects}
            if all(p.is_file() for p in paths.values()):
                masks[frame] = {obj: read_binary_png(p) for obj, p in paths.items()}
        elif (folder / f"{stem}.png").is_file():
            ids = read_id_png(folder / f"{stem}.png")
            masks[frame] = {obj: ids == obj for obj in objects}
    return masks

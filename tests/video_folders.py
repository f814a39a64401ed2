"""Generated video folders in the DAVIS 2017, MOSE and SA-V layouts, for the video tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tomeplug_eval.video.png_io import write_palette_png

H, W = 24, 32


def write_frames(folder: Path, count: int, size: tuple[int, int] = (H, W)) -> None:
    """``count`` random JPEG frames named 00000.jpg, 00001.jpg... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for t in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{t:05d}.jpg")


def id_map(t: int) -> np.ndarray:
    """Frame t of a two-object sequence: object 1 moves right; object 2 appears on frame 2; a void pixel."""
    ids = np.zeros((H, W), np.uint8)
    ids[4:10, 2 + t : 8 + t] = 1
    if t >= 2:
        ids[14:20, 20:26] = 2
    ids[0, 0] = 255
    return ids


def write_davis(
    root: Path, names: list[str], frames: int = 4, nested: bool = True, annotated: int | None = None
) -> None:
    """A DAVIS (nested 480p) or MOSE (flat) folder; ``annotated`` frames have PNGs (default all)."""
    level = ("480p",) if nested else ()
    for name in names:
        write_frames(root.joinpath("JPEGImages", *level, name), frames)
        for t in range(frames if annotated is None else annotated):
            write_palette_png(root.joinpath("Annotations", *level, name, f"{t:05d}.png"), id_map(t))
    if nested:
        (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{n}\n" for n in names))


def write_sav(root: Path, video: str = "sav_000001", frames: int = 13) -> None:
    """SA-V: 24 fps frames, objects 000 and 001 (overlapping) as binary PNGs on every 4th frame."""
    write_frames(root / "JPEGImages_24fps" / video, frames)
    for t in range(0, frames, 4):
        for obj in (0, 1):
            mask = np.zeros((H, W), np.uint8)
            mask[2:12, 2 + obj * 4 : 14 + obj * 4] = 1
            write_palette_png(root / "Annotations_6fps" / video / f"{obj:03d}" / f"{t:05d}.png", mask)
    (root / "sav_val.txt").write_text(f"{video}\n")

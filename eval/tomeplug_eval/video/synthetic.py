"""``synthetic_video``: generated moving shapes, written as a DAVIS-layout folder and read by the DAVIS loader.

Each sequence has 1 to 3 objects drawn from the image set's hard shapes (rings, thin bars, spiky stars, combs,
holed ellipses), each with its own texture. Every object translates and scales smoothly (its texture moves
with it) over a static textured background; objects drawn later occlude earlier ones, and the last object
heads for the first one half of the time, so occlusions happen. Masks are exact (nearest-neighbour warps);
frames are JPEGs (what ``SAM2VideoPredictor.init_state`` reads), annotations palette PNGs of object ids.
Every object is visible on the first frame; it may be hidden later. A sequence is a pure function of
``(seed, index)``, so the folder is written once per parameter set and reused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..data.synthetic import SHAPES, texture
from .davis import DAVISDataset
from .png_io import write_palette_png

VERSION = 1  # bump when the generator changes: the cache key includes it
DONE = "complete"


def default_cache_dir() -> Path:
    """``$TOMEPLUG_CACHE``, else ``<tmp>/tomeplug-cache`` (not ``<tmp>/tomeplug``: that would shadow the package)."""
    return Path(os.environ.get("TOMEPLUG_CACHE") or Path(tempfile.gettempdir()) / "tomeplug-cache")


def _motion(rng: np.random.Generator, mask: np.ndarray, frames: int, target: np.ndarray | None) -> list[np.ndarray]:
    """One 2x3 affine per frame: scale by s^t about the mask's centroid, then translate by v·t."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    centre = np.array([xs.mean(), ys.mean()])
    if target is not None:  # head for the target over the sequence
        velocity = (target - centre) / max(frames - 1, 1)
    else:
        velocity = rng.uniform(-0.02, 0.02, 2) * [w, h]
    scale = rng.uniform(0.97, 1.03)
    affines = []
    for t in range(frames):
        s = scale**t
        affines.append(
            np.array([[s, 0, (1 - s) * centre[0] + velocity[0] * t], [0, s, (1 - s) * centre[1] + velocity[1] * t]])
        )
    return affines


def _sequence(rng: np.random.Generator, frames: int, h: int, w: int, min_area: int) -> tuple[list, list]:
    """(frames as uint8 RGB, id maps) of one generated sequence."""
    background_colour = rng.uniform(30, 226, 3).astype(np.float32)
    background = texture(rng, h, w, background_colour)
    objects = []
    count = int(rng.integers(1, 4))
    chase = count > 1 and rng.random() < 0.5  # the last object heads for the first one
    for k in range(count):
        mask = SHAPES[rng.choice(list(SHAPES))](rng, h, w)
        colour = ((background_colour + rng.uniform(70, 186, 3)) % 256).astype(np.float32)
        target = None
        if chase and k == count - 1:
            ys, xs = np.nonzero(objects[0][0])
            target = np.array([xs.mean(), ys.mean()])
        objects.append((mask, texture(rng, h, w, colour), _motion(rng, mask, frames, target)))
    images, id_maps = [], []
    for t in range(frames):
        image, ids = background.copy(), np.zeros((h, w), np.uint8)
        for k, (mask, tex, affines) in enumerate(objects, start=1):
            moved = cv2.warpAffine(mask, affines[t], (w, h), flags=cv2.INTER_NEAREST).astype(bool)
            image[moved] = cv2.warpAffine(tex, affines[t], (w, h), borderMode=cv2.BORDER_REFLECT)[moved]
            ids[moved] = k
        images.append(np.clip(image.round(), 0, 255).astype(np.uint8))
        id_maps.append(ids)
    visible = [k for k in range(1, len(objects) + 1) if np.count_nonzero(id_maps[0] == k) >= min_area]
    visible = visible or [len(objects)]  # the top object is never occluded on the first frame
    lut = np.zeros(256, np.uint8)
    lut[visible] = np.arange(1, len(visible) + 1)
    return images, [lut[ids] for ids in id_maps]


def _write(root: Path, count: int, frames: int, size: tuple[int, int], seed: int, min_area: int) -> None:
    names = [f"synthetic-{seed}-{i:05d}" for i in range(count)]
    for i, name in enumerate(names):
        images, id_maps = _sequence(np.random.default_rng((seed, i)), frames, *size, min_area)
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
        for t, (image, ids) in enumerate(zip(images, id_maps, strict=True)):
            Image.fromarray(image).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
            write_palette_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{n}\n" for n in names))
    (root / DONE).write_text("")


def synthetic_video(
    count: int = 4,
    frames: int = 8,
    size: int | tuple[int, int] = (96, 128),
    seed: int = 0,
    min_area: int = 16,
    cache_dir: str | Path | None = None,
) -> DAVISDataset:
    """``count`` generated sequences of ``frames`` frames of ``size`` (H, W), as a :class:`DAVISDataset`.

    Args:
        count: number of sequences.
        frames: frames per sequence (at least 3: the first and last are not scored).
        size: frame size, an int for squares; at least 32 a side.
        seed: sequence i is drawn from ``np.random.default_rng((seed, i))``.
        min_area: fewest pixels an object shows on the first frame (else it is left out).
        cache_dir: where the folder is written (default :func:`default_cache_dir`); one subfolder per parameter set,
            written atomically, so concurrent ranks may share it.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if count < 1 or frames < 3 or min(h, w) < 32:
        raise ValueError(f"synthetic_video: need count >= 1, frames >= 3, size >= 32, got {count}, {frames}, {size}")
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = base / f"synthetic_video-v{VERSION}-n{count}-f{frames}-{h}x{w}-s{seed}-a{min_area}"
    if not (root / DONE).is_file():
        base.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".synthetic_video-", dir=base))
        try:
            _write(scratch, count, frames, (h, w), seed, min_area)
            os.replace(scratch, root)  # atomic: root exists only complete
        except OSError:
            if not (root / DONE).is_file():  # else another process renamed its copy first
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return DAVISDataset(root, split="val", resolution="480p", title="synthetic_video")

"""A generated dataset of hard shapes (thin bars, rings, holes, spiky stars, combs) on textured backgrounds.

Every item is a pure function of ``(seed, index)``: any shard, in any order, regenerates the same pixels.
Masks are exact: each object is rasterised without anti-aliasing, its pixels are painted with its own texture,
and objects drawn later occlude earlier ones (an earlier mask keeps only its visible part; an object left with
fewer than ``min_area`` visible pixels is dropped). Every image has 1 to 3 objects.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .item import ImageDataset, ImageItem

Shape = Callable[[np.random.Generator, int, int], np.ndarray]
GENERATOR = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:16]  # this file's code: part of every identity


def _canvas(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w), np.uint8)


def _centre(rng: np.random.Generator, h: int, w: int, margin: float) -> tuple[int, int]:
    return int(rng.uniform(margin * w, (1 - margin) * w)), int(rng.uniform(margin * h, (1 - margin) * h))


def _ring(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An annulus: a thin band with a hole."""
    s = min(h, w)
    radius = int(rng.uniform(0.1, 0.3) * s)
    thickness = int(rng.integers(2, max(3, radius // 3) + 1))
    return cv2.circle(_canvas(h, w), _centre(rng, h, w, 0.25), radius, 1, thickness, cv2.LINE_8)


def _segment(canvas: np.ndarray, p0: np.ndarray, p1: np.ndarray, width: float) -> np.ndarray:
    """Mark the pixels whose centres lie closer than width / 2 to the segment p0-p1 (x, y): exactly that wide."""
    h, w = canvas.shape
    lo = np.maximum(np.floor(np.minimum(p0, p1) - width), 0).astype(int)
    hi = np.minimum(np.ceil(np.maximum(p0, p1) + width) + 1, [w, h]).astype(int)
    y, x = np.mgrid[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float64)
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    near = np.hypot(x - p0[0] - t * d[0], y - p0[1] - t * d[1]) < width / 2
    canvas[lo[1] : hi[1], lo[0] : hi[0]] |= near.astype(np.uint8)
    return canvas


def _bar(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A long straight bar 1 to 4 pixels wide."""
    p0, p1 = rng.uniform([0.05 * w, 0.05 * h], [0.95 * w, 0.95 * h], (2, 2))
    if np.abs(p1 - p0).sum() < min(h, w) / 4:  # keep it long: run towards the farthest corner
        p1 = np.where(p0 < [w / 2, h / 2], [0.95 * w, 0.95 * h], [0.05 * w, 0.05 * h])
    return _segment(_canvas(h, w), p0, p1, float(rng.integers(1, 5)))


def _star(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A star with 5 to 9 thin spikes."""
    cx, cy = _centre(rng, h, w, 0.25)
    spikes, outer = int(rng.integers(5, 10)), rng.uniform(0.12, 0.25) * min(h, w)
    inner = outer * rng.uniform(0.15, 0.4)
    angles = rng.uniform(0, 2 * math.pi) + np.arange(2 * spikes) * math.pi / spikes
    radii = np.where(np.arange(2 * spikes) % 2 == 0, outer, inner)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).round().astype(np.int32)
    return cv2.fillPoly(_canvas(h, w), [points], 1, cv2.LINE_8)


def _comb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A rotated comb: a spine 2 to 4 pixels wide with 4 to 10 teeth 1 to 2 pixels wide."""
    centre = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h])
    length, tooth = rng.uniform(0.25, 0.45) * min(h, w), rng.uniform(0.08, 0.2) * min(h, w)
    angle = rng.uniform(0, math.pi)
    along, across = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
    start, end = centre - along * length / 2, centre + along * length / 2
    canvas = _segment(_canvas(h, w), start, end, float(rng.integers(2, 5)))
    width = float(rng.integers(1, 3))
    for t in np.linspace(0, 1, int(rng.integers(4, 11))):
        base = start + (end - start) * t
        _segment(canvas, base, base + across * tooth, width)
    return canvas


def _holed_ellipse(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A filled ellipse with an elliptic hole cut out of it."""
    centre, s = _centre(rng, h, w, 0.3), min(h, w)
    axes = (int(rng.uniform(0.1, 0.25) * s), int(rng.uniform(0.06, 0.2) * s))
    angle = float(rng.uniform(0, 180))
    canvas = cv2.ellipse(_canvas(h, w), centre, axes, angle, 0, 360, 1, -1, cv2.LINE_8)
    hole = (max(1, int(axes[0] * rng.uniform(0.3, 0.6))), max(1, int(axes[1] * rng.uniform(0.3, 0.6))))
    return cv2.ellipse(canvas, centre, hole, angle, 0, 360, 0, -1, cv2.LINE_8)


SHAPES: dict[str, Shape] = {"ring": _ring, "bar": _bar, "star": _star, "comb": _comb, "ellipse": _holed_ellipse}


def texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32: a base colour with low-frequency blotches, oriented stripes and pixel noise."""
    cells = int(rng.integers(3, 9))
    blotches = cv2.resize(rng.standard_normal((cells, cells, 3), np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    theta, period = rng.uniform(0, math.pi), rng.uniform(4, 24)
    step = 2 * math.pi / period
    ky, kx = step * math.sin(theta), step * math.cos(theta)
    phase = np.arange(h, dtype=np.float32)[:, None] * ky + np.arange(w, dtype=np.float32) * kx
    stripes = np.sin(phase)[..., None]
    noise = rng.standard_normal((h, w, 1), np.float32)
    return colour + 18 * blotches + rng.uniform(5, 25) * stripes + 6 * noise


class SyntheticDataset(ImageDataset):
    """``count`` generated images of ``size`` (an int for squares, or (H, W)), deterministic per ``seed``.

    Args:
        count: number of items.
        size: image size; at least 32 pixels a side.
        seed: the item at index i is drawn from ``np.random.default_rng((seed, i))``.
        min_area: fewest visible pixels an object may keep after occlusion.
    """

    def __init__(self, count: int = 16, size: int | tuple[int, int] = 256, seed: int = 0, min_area: int = 16) -> None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if count < 0 or min(h, w) < 32:
            raise ValueError(f"synthetic: need count >= 0 and size >= 32 a side, got count={count}, size={size}")
        self.name, self.count, self.shape, self.seed, self.min_area = "synthetic", count, (h, w), seed, min_area

    def __len__(self) -> int:
        return self.count

    def identity(self, index: int) -> dict[str, Any]:
        """What item ``index`` is generated from: this generator's source, the seed, the index, size and min_area."""
        shape, min_area = self.shape, self.min_area
        return {"generator": GENERATOR, "seed": self.seed, "index": index, "shape": shape, "min_area": min_area}

    def _load(self, index: int) -> ImageItem:
        rng = np.random.default_rng((self.seed, index))
        h, w = self.shape
        background = rng.uniform(30, 226, 3).astype(np.float32)
        image = texture(rng, h, w, background)
        masks: list[np.ndarray] = []
        kinds = rng.choice(list(SHAPES), size=int(rng.integers(1, 4)))
        for kind in kinds:
            mask = SHAPES[kind](rng, h, w).astype(bool)
            colour = (background + rng.uniform(70, 186, 3)) % 256  # every channel far from the background's
            image[mask] = texture(rng, h, w, colour.astype(np.float32))[mask]
            masks = [m & ~mask for m in masks] + [mask]
        masks = [m for m in masks[:-1] if m.sum() >= self.min_area] + masks[-1:]
        pixels = np.clip(image.round(), 0, 255).astype(np.uint8)
        return ImageItem(name=f"synthetic-{self.seed}-{index:05d}", image=pixels, masks=masks)

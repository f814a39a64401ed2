"""The unmerged model's outputs per item, cached on disk so every strategy of a sweep compares to them.

Fidelity compares a merged model with the same model unmerged, on the same prompts. A ``strategy=none``
run writes its own outputs here; any other run reads them, computing the missing ones first with the
model unpatched. One ``<item key>.npz`` per item under ``cache/reference/<reference key>/``, named by the
item's identity (:meth:`~.tasks.Task.item_key`: its files' names, sizes and times), never by its index, so
an item that was replaced, or that moved to another index when the folder changed, is never compared with
another item's outputs. Each file holds the predicted masks
(bit-packed, at the original image size) and the image embedding, stored as float16 (about 2 MB for SAM's
256x64x64; float32 if float16 would overflow). float16 storage moves a cosine near 1 by about 1e-7; the
baseline run compares with its own outputs in memory, so its fidelity is exactly 1.
"""

from __future__ import annotations

import io
from pathlib import Path

import attrs
import numpy as np

from .results import atomic_write


@attrs.frozen(eq=False)
class Reference:
    """One item's unmerged outputs: masks (K, H, W) bool and the image embedding (C, h, w) float32."""

    masks: np.ndarray
    embedding: np.ndarray


class ReferenceCache:
    """The reference outputs of one (model, weights, data, protocol), by item key (the item's identity)."""

    def __init__(self, output_dir: str | Path, key: str) -> None:
        self.dir = Path(output_dir) / "cache" / "reference" / key

    def _path(self, item: str) -> Path:
        return self.dir / f"{item}.npz"

    def __contains__(self, item: str) -> bool:
        return self._path(item).is_file()

    def save(self, item: str, reference: Reference) -> None:
        """Store one item's reference atomically."""
        embedding = reference.embedding.astype(np.float16)
        if not np.isfinite(embedding).all():
            embedding = reference.embedding.astype(np.float32)
        masks = np.asarray(reference.masks, bool)
        buffer = io.BytesIO()
        np.savez(buffer, packed=np.packbits(masks.reshape(-1)), shape=np.array(masks.shape), embedding=embedding)
        atomic_write(self._path(item), buffer.getvalue())

    def load(self, item: str) -> Reference:
        """One item's reference; a clear error if it was never computed or the file is damaged."""
        path = self._path(item)
        try:
            with np.load(path) as data:
                shape = tuple(int(s) for s in data["shape"])
                masks = np.unpackbits(data["packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)
                return Reference(masks, data["embedding"].astype(np.float32))
        except (OSError, KeyError, ValueError) as error:
            raise RuntimeError(f"reference outputs of item {item} unreadable at {path}: {error}; delete it") from error

"""The unit of evaluation data: an image with one or more object masks, and the dataset sequence type."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import attrs
import numpy as np


def _check_image(item: ImageItem, _attribute: attrs.Attribute, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"item {item.name!r}: image must be an HxWx3 uint8 RGB array, got {got}")


def _check_masks(item: ImageItem, _attribute: attrs.Attribute, masks: list[np.ndarray]) -> None:
    if not masks:
        raise ValueError(f"item {item.name!r}: needs at least one object mask")
    size = item.image.shape[:2]
    for k, mask in enumerate(masks):
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != size:
            got = f"{type(mask).__name__} {getattr(mask, 'dtype', '')} {getattr(mask, 'shape', '')}"
            raise ValueError(f"item {item.name!r}: mask {k} must be a bool array of shape {size}, got {got}")


@attrs.frozen(eq=False)
class ImageItem:
    """One image and its objects.

    Attributes:
        name: an identifier unique within its dataset (the file stem for folder datasets).
        image: (H, W, 3) uint8, RGB.
        masks: one (H, W) bool array per object, each the object's full ground-truth region.
    """

    name: str
    image: np.ndarray = attrs.field(validator=_check_image)
    masks: list[np.ndarray] = attrs.field(converter=list, validator=_check_masks)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image and of every mask."""
        return self.image.shape[0], self.image.shape[1]


T = TypeVar("T")


def file_stamps(paths: Iterable[Path], root: Path | None = None) -> list[list[Any]]:
    """``[name, size, mtime_ns]`` of each file (its path relative to ``root``, or its file name without one):
    how an item's identity names the files it reads."""
    stamps = []
    for path in paths:
        stat = path.stat()
        name = path.name if root is None else path.relative_to(root).as_posix()
        stamps.append([name, stat.st_size, stat.st_mtime_ns])
    return stamps


def folder_stamps(folder: Path, root: Path) -> list[list[Any]]:
    """:func:`file_stamps` of every file under ``folder`` (recursively, sorted by path)."""
    return file_stamps(sorted(p for p in folder.rglob("*") if p.is_file()), root)


class IndexedDataset(Sequence[T]):
    """A read-only, indexable sequence of items, loaded lazily one index at a time.

    Items are a pure function of (dataset, index): ranks that shard by index (``range(rank, len(ds), world)``)
    see exactly the items a single process would. Subclasses implement ``__len__`` and ``_load``.
    """

    name: str = "dataset"

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> T:
        raise NotImplementedError

    def identity(self, index: int) -> Any:
        """What item ``index`` is, JSON-able and cheap (no decoding): the names, sizes and modification times
        of the files it reads (:func:`file_stamps`), or the parameters it is generated from. Results and
        caches are keyed by it, so an edited, replaced or shifted item is never matched with another's."""
        raise NotImplementedError(
            f"{type(self).__name__} ({self.name}) does not say what its items are: implement identity(index) "
            "(e.g. file_stamps of the files item `index` reads) so results are keyed by the items they cover"
        )

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        """The item at ``index`` (negative indices count from the end); a slice gives a list."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.name}: index must be an int or a slice, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} items")
        return self._load(int(index) % n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)})"


class ImageDataset(IndexedDataset[ImageItem]):
    """A lazily loaded, indexable sequence of :class:`ImageItem` (see :class:`IndexedDataset`)."""


class LazyDataset(ImageDataset):
    """A dataset given as a list of zero-argument loaders, one per item (for small fixed sets), and each item's
    :meth:`~IndexedDataset.identity` (what its loader reads)."""

    def __init__(self, name: str, loaders: Sequence[Callable[[], ImageItem]], identities: Sequence[Any]) -> None:
        if len(identities) != len(loaders):
            raise ValueError(f"{name}: {len(loaders)} loaders but {len(identities)} identities; give one per item")
        self.name = name
        self._loaders = list(loaders)
        self._identities = list(identities)

    def identity(self, index: int) -> Any:
        return self._identities[index]

    def __len__(self) -> int:
        return len(self._loaders)

    def _load(self, index: int) -> ImageItem:
        return self._loaders[index]()

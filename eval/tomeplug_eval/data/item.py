"""The unit of evaluation data: an image with one or more object masks, and the dataset sequence type."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar, overload

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
    """A dataset given as a list of zero-argument loaders, one per item (for small fixed sets)."""

    def __init__(self, name: str, loaders: Sequence[Callable[[], ImageItem]]) -> None:
        self.name = name
        self._loaders = list(loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def _load(self, index: int) -> ImageItem:
        return self._loaders[index]()

"""Datasets by name: a plain dict of builders, with aliases, resolved in one place (:func:`load_dataset`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .hqsam_layout import LAYOUTS, HQSAMDataset
from .item import ImageDataset
from .smoke import smoke_dataset
from .synthetic import SyntheticDataset


def _hqsam(key: str, data_root: str | Path | None) -> ImageDataset:
    if data_root is None:
        layout = LAYOUTS[key]
        raise ValueError(
            f"dataset {key!r} needs data_root: the folder holding {layout.images.split('/')[0]}/ "
            f"(HQ-SAM's data/; images expected under <data_root>/{layout.images})"
        )
    return HQSAMDataset(key, data_root)


def _synthetic(data_root: str | Path | None, **options: Any) -> ImageDataset:
    return SyntheticDataset(**options)


def _smoke(data_root: str | Path | None, **options: Any) -> ImageDataset:
    return smoke_dataset(**options)


# name -> builder(data_root, **options). Generated and packaged sets need no data_root and ignore it.
DATASETS: dict[str, Callable[..., ImageDataset]] = {
    **{key: functools.partial(_hqsam, key) for key in LAYOUTS},
    "synthetic": _synthetic,
    "smoke": _smoke,
}
ALIASES: dict[str, str] = {
    "dis5k": "dis",
    "dis-vd": "dis",
    "dis5k-vd": "dis",
    "thinobject5k": "thin",
    "thinobject5k-te": "thin",
    "thinobject": "thin",
}


def list_datasets() -> list[str]:
    """The canonical dataset names (aliases excluded)."""
    return sorted(DATASETS)


def load_dataset(name: str, data_root: str | Path | None = None, **options: Any) -> ImageDataset:
    """The dataset called ``name`` (case-insensitive; aliases such as ``dis5k`` accepted).

    Args:
        name: one of :func:`list_datasets` or an alias.
        data_root: HQ-SAM's ``data/`` folder, needed by ``dis``, ``thin``, ``coift`` and ``hrsod``.
        options: builder options, e.g. ``count``, ``size``, ``seed`` for ``synthetic``.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        known = ", ".join(list_datasets())
        raise ValueError(f"unknown dataset {name!r}; known: {known} (aliases: {', '.join(sorted(ALIASES))})")
    if key in LAYOUTS and options:
        raise TypeError(f"dataset {key!r} takes no options, got {sorted(options)}")
    return DATASETS[key](data_root, **options)

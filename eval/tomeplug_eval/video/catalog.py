"""Video datasets by name: a plain dict of builders resolved in one place (:func:`load_video_dataset`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .davis import DAVISDataset
from .item import VideoDataset
from .sav import SAVDataset
from .synthetic import synthetic_video


def _root(name: str, data_root: str | Path | None, holds: str) -> str | Path:
    if data_root is None:
        raise ValueError(f"dataset {name!r} needs data_root: the folder holding {holds}")
    return data_root


def _davis(data_root: str | Path | None, **options: Any) -> VideoDataset:
    return DAVISDataset(_root("davis", data_root, "JPEGImages/480p, Annotations/480p and ImageSets/2017"), **options)


def _mose(data_root: str | Path | None, **options: Any) -> VideoDataset:
    options = {"split": None, "title": "MOSE", **options}
    return DAVISDataset(_root("mose", data_root, "JPEGImages and Annotations (e.g. MOSE's valid/)"), **options)


def _sav(data_root: str | Path | None, **options: Any) -> VideoDataset:
    return SAVDataset(
        _root("sav", data_root, "JPEGImages_24fps and Annotations_6fps (sav_val/ or sav_test/)"), **options
    )


def _synthetic(data_root: str | Path | None, **options: Any) -> VideoDataset:
    return synthetic_video(**options)


# name -> builder(data_root, **options); the generated set needs no data_root and ignores it
VIDEO_DATASETS: dict[str, Callable[..., VideoDataset]] = {
    "davis": _davis,
    "mose": _mose,
    "sav": _sav,
    "synthetic_video": _synthetic,
}
VIDEO_ALIASES: dict[str, str] = {
    "davis2017": "davis",
    "davis17": "davis",
    "sa-v": "sav",
    "sav_val": "sav",
    "sav_test": "sav",
}


def list_video_datasets() -> list[str]:
    """The canonical video dataset names."""
    return sorted(VIDEO_DATASETS)


def load_video_dataset(name: str, data_root: str | Path | None = None, **options: Any) -> VideoDataset:
    """The video dataset called ``name`` (case-insensitive, aliases accepted).

    Args:
        name: ``davis``, ``mose``, ``sav`` or ``synthetic_video``.
        data_root: the dataset's folder (see each loader); not used by ``synthetic_video``.
        options: loader options, e.g. ``split`` (DAVIS, SA-V), ``resolution`` (DAVIS, MOSE), ``count``,
            ``frames``, ``size``, ``seed`` (synthetic_video).
    """
    key = VIDEO_ALIASES.get(name.lower(), name.lower())
    if key not in VIDEO_DATASETS:
        known = ", ".join(list_video_datasets())
        raise ValueError(
            f"unknown video dataset {name!r}; known: {known} (aliases: {', '.join(sorted(VIDEO_ALIASES))})"
        )
    return VIDEO_DATASETS[key](data_root, **options)

"""DAVIS 2017 and MOSE: JPEG frames and palette-PNG annotations of object ids, one folder per sequence.

Layouts under ``data_root`` (``resolution="auto"`` picks the first that exists):

- DAVIS: ``JPEGImages/480p/<seq>/00000.jpg``, ``Annotations/480p/<seq>/00000.png`` and the sequence
  lists ``ImageSets/2017/<split>.txt`` (``resolution="Full-Resolution"`` for the full-size set).
- MOSE (and DAVIS re-packed without the resolution level): ``JPEGImages/<seq>/00000.jpg``,
  ``Annotations/<seq>/00000.png``; MOSE has no ImageSets, so ``split=None`` lists every annotated sequence.

Annotation values are object ids; 255 is void and is neither an object nor background to the loader: it is
kept in :attr:`VideoItem.void` (the metrics treat it as the DAVIS evaluator does, see ``metrics.py``). Only
frames with a PNG are annotated (MOSE's validation set annotates the first frame only: predictions are
written for its server, and no frame is scored locally). An object is prompted at its first non-empty
annotated frame; in DAVIS 2017 and MOSE every object is in the first frame, so this is the first-frame protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.item import folder_stamps
from .item import VideoDataset, VideoItem
from .png_io import VOID, frame_size, list_frames, read_id_png


def _layout_dirs(root: Path, resolution: str | None, title: str) -> tuple[Path, Path]:
    """The folders holding the sequences' frame folders and annotation folders."""
    if resolution == "auto":
        resolution = "480p" if (root / "JPEGImages" / "480p").is_dir() else None
    images, annotations = root / "JPEGImages", root / "Annotations"
    if resolution:
        images, annotations = images / resolution, annotations / resolution
    for folder in (images, annotations):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{title}: folder not found: {folder}; expected JPEGImages/480p/<seq>/*.jpg and "
                f"Annotations/480p/<seq>/*.png (DAVIS) or JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png (MOSE) "
                f"under {root}"
            )
    return images, annotations


class DAVISDataset(VideoDataset):
    """The sequences of a DAVIS-layout set, listed at construction and loaded lazily per index.

    Args:
        data_root: the folder holding ``JPEGImages``, ``Annotations`` (and ``ImageSets``).
        split: read the sequence list from ``ImageSets/<year>/<split>.txt``; ``None``: every sequence
            folder under the annotations, sorted.
        resolution: ``"auto"``, a resolution folder (``"480p"``), or ``None`` for the flat MOSE layout.
        year: the ImageSets folder.
        sequences: an explicit list of sequence names (overrides ``split``).
        title: the set's name in messages and records.
    """

    def __init__(
        self,
        data_root: str | Path,
        split: str | None = "val",
        resolution: str | None = "auto",
        year: str = "2017",
        sequences: list[str] | None = None,
        title: str = "DAVIS",
    ) -> None:
        self.root = root = Path(data_root).expanduser()
        self.name = title.lower()
        self.title = title
        if not root.is_dir():
            raise FileNotFoundError(f"{title}: data_root not found: {root}")
        self.images, self.annotations = _layout_dirs(root, resolution, title)
        source = "the given sequences"
        if sequences is None and split is not None:
            list_file = root / "ImageSets" / year / f"{split}.txt"
            if not list_file.is_file():
                raise FileNotFoundError(
                    f"{title}: sequence list not found: {list_file}; give split=None to use every sequence "
                    f"under {self.annotations}"
                )
            sequences, source = [s.strip() for s in list_file.read_text().splitlines() if s.strip()], str(list_file)
        elif sequences is None:
            sequences, source = sorted(p.name for p in self.annotations.iterdir() if p.is_dir()), str(self.annotations)
        if not sequences:
            raise FileNotFoundError(f"{title}: no sequences in {source}")
        for kind, base in (("frames", self.images), ("annotations", self.annotations)):
            missing = [s for s in sequences if not (base / s).is_dir()]
            if missing:
                shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
                raise FileNotFoundError(
                    f"{title}: sequences listed in {source} have no {kind} folder in {base}: {shown}"
                )
        self.names = list(sequences)

    def __len__(self) -> int:
        return len(self.names)

    def identity(self, index: int) -> list[list[object]]:
        """Every file of the sequence's frame and annotation folders: path under ``data_root``, size, mtime."""
        name = self.names[index]
        return folder_stamps(self.images / name, self.root) + folder_stamps(self.annotations / name, self.root)

    def _load(self, index: int) -> VideoItem:
        name = self.names[index]
        what = f"{self.title} sequence {name!r}"
        frames = list_frames(self.images / name, what)
        size = frame_size(frames[0])
        odd = [p.name for p in frames if frame_size(p) != size]
        if odd:
            raise ValueError(f"{what}: frames of different sizes: {frames[0].name} is {size}, {odd[0]} is not")
        index_of = {p.stem: i for i, p in enumerate(frames)}
        pngs = sorted(p for p in (self.annotations / name).iterdir() if p.suffix == ".png")
        if not pngs:
            raise FileNotFoundError(f"{what}: no .png annotations in {self.annotations / name}")
        orphans = [p.name for p in pngs if p.stem not in index_of]
        if orphans:
            raise ValueError(f"{what}: annotations without a frame in {self.images / name}: {', '.join(orphans[:5])}")
        ids: dict[int, np.ndarray] = {}
        for png in pngs:
            values = read_id_png(png)
            if values.shape != size:
                raise ValueError(f"{what}: annotation {png} is {values.shape} but the frames are {size}")
            ids[index_of[png.stem]] = values
        return item_from_id_maps(name, frames, ids, size, what)


def item_from_id_maps(
    name: str, frames: list[Path], ids: dict[int, np.ndarray], size: tuple[int, int], what: str
) -> VideoItem:
    """A :class:`VideoItem` from per-frame id maps: one object per id, prompted at its first non-empty frame."""
    found = sorted({int(v) for values in ids.values() for v in np.unique(values)} - {0, VOID})
    if not found:
        raise ValueError(f"{what}: no object ids (values 1..254) in any annotation; only background and void")
    masks = {frame: {obj: values == obj for obj in found} for frame, values in sorted(ids.items())}
    prompts = {obj: next(f for f, objects in masks.items() if objects[obj].any()) for obj in found}
    void = {frame: values == VOID for frame, values in ids.items() if (values == VOID).any()}
    return VideoItem(name=name, frame_paths=frames, masks=masks, prompts=prompts, size=size, void=void)

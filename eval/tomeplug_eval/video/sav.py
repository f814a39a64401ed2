"""SA-V val / test: frames at 24 fps, one binary PNG per object at 6 fps.

Layout under ``data_root`` (the ``sav_val`` or ``sav_test`` folder)::

    sav_val.txt                                   video ids of the split (optional: split=None lists folders)
    JPEGImages_24fps/<video>/00000.jpg ...        every frame
    Annotations_6fps/<video>/<obj>/00000.png ...  object <obj> (a number, "000") on every 4th frame

Objects may overlap, so predictions are written one PNG per object (``per_object_png``) and SAM 2 runs
with overlapping outputs allowed. Only the annotated frames are scored; the video is still run at 24 fps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.item import folder_stamps
from .item import VideoDataset, VideoItem
from .png_io import frame_size, list_frames, read_binary_png

FRAMES, ANNOTATIONS = "JPEGImages_24fps", "Annotations_6fps"


class SAVDataset(VideoDataset):
    """The videos of an SA-V split, listed at construction and loaded lazily per index.

    Args:
        data_root: the split's folder (``sav_val`` or ``sav_test``).
        split: read the video list from ``<data_root>/<split>.txt``; ``None``: every annotated video, sorted.
        frames: the frame folder's name.
        annotations: the annotation folder's name.
    """

    def __init__(
        self, data_root: str | Path, split: str | None = None, frames: str = FRAMES, annotations: str = ANNOTATIONS
    ) -> None:
        self.root = root = Path(data_root).expanduser()
        self.name, self.title = "sav", "SA-V"
        self.images, self.annotations = root / frames, root / annotations
        for folder in (root, self.images, self.annotations):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"SA-V: folder not found: {folder}; expected {frames}/<video>/*.jpg and "
                    f"{annotations}/<video>/<obj>/*.png under {root}"
                )
        if split is not None:
            list_file = root / f"{split}.txt"
            if not list_file.is_file():
                raise FileNotFoundError(f"SA-V: video list not found: {list_file}; give split=None to use every video")
            names, source = [s.strip() for s in list_file.read_text().splitlines() if s.strip()], str(list_file)
        else:
            names, source = sorted(p.name for p in self.annotations.iterdir() if p.is_dir()), str(self.annotations)
        if not names:
            raise FileNotFoundError(f"SA-V: no videos in {source}")
        for base in (self.images, self.annotations):
            missing = [n for n in names if not (base / n).is_dir()]
            if missing:
                raise FileNotFoundError(
                    f"SA-V: videos listed in {source} are missing from {base}: {', '.join(missing[:5])}"
                )
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def identity(self, index: int) -> list[list[object]]:
        """Every file of the video's frame folder and object annotation folders: path, size, mtime."""
        name = self.names[index]
        return folder_stamps(self.images / name, self.root) + folder_stamps(self.annotations / name, self.root)

    def _load(self, index: int) -> VideoItem:
        name = self.names[index]
        what = f"SA-V video {name!r}"
        frames = list_frames(self.images / name, what)
        size = frame_size(frames[0])
        index_of = {p.stem: i for i, p in enumerate(frames)}
        folder = self.annotations / name
        entries = sorted(folder.iterdir())
        if any(p.is_file() for p in entries) or not entries:
            raise ValueError(
                f"{what}: expected one folder per object (000, 001, ...) in {folder}, found files or nothing"
            )
        bad = [p.name for p in entries if not p.name.isdigit()]
        if bad:
            raise ValueError(f"{what}: object folders must be numbers (000, 001, ...), got {', '.join(bad[:3])}")
        masks: dict[int, dict[int, np.ndarray]] = {}
        annotated: list[int] | None = None
        for obj_dir in entries:
            obj = int(obj_dir.name)
            pngs = sorted(p for p in obj_dir.iterdir() if p.suffix == ".png")
            orphans = [p.name for p in pngs if p.stem not in index_of]
            if orphans:
                raise ValueError(f"{what}: object {obj_dir.name} annotates missing frames: {', '.join(orphans[:5])}")
            frame_ids = sorted(index_of[p.stem] for p in pngs)
            if annotated is None:
                annotated = frame_ids
            elif frame_ids != annotated:
                raise ValueError(
                    f"{what}: object {obj_dir.name} is annotated on other frames than object {entries[0].name}"
                )
            for png in pngs:
                mask = read_binary_png(png)
                if mask.shape != size:
                    raise ValueError(f"{what}: annotation {png} is {mask.shape} but the frames are {size}")
                masks.setdefault(index_of[png.stem], {})[obj] = mask
        if not annotated:
            raise FileNotFoundError(f"{what}: no .png annotations under {folder}")
        prompts = {}
        for obj in sorted(masks[annotated[0]]):
            first = next((f for f in annotated if masks[f][obj].any()), None)
            if first is None:
                raise ValueError(f"{what}: object {obj:03d} is empty in every annotated frame")
            prompts[obj] = first
        masks = dict(sorted(masks.items()))
        return VideoItem(name, frames, masks, prompts, size, per_object_png=True)

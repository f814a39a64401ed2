"""The unit of video evaluation data: a folder of frames with per-object ground truth, and the dataset type."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np

from tomeplug_eval.data.item import IndexedDataset

Masks = dict[int, dict[int, np.ndarray]]  # frame index -> object id -> (H, W) bool mask


def _check(item: VideoItem) -> None:
    if not item.frame_paths:
        raise ValueError(f"video {item.name!r}: no frames")
    if not item.masks:
        raise ValueError(f"video {item.name!r}: no annotated frame")
    if not item.prompts:
        raise ValueError(f"video {item.name!r}: no object to prompt")
    n = len(item.frame_paths)
    for frame, objects in item.masks.items():
        if not 0 <= frame < n:
            raise ValueError(f"video {item.name!r}: annotation of frame {frame}, but the video has {n} frames")
        for obj, mask in objects.items():
            if mask.dtype != np.bool_ or mask.shape != item.size:
                raise ValueError(
                    f"video {item.name!r}: frame {frame} object {obj}: need a bool mask of shape {item.size}, "
                    f"got {mask.dtype} {mask.shape}"
                )
    for obj, frame in item.prompts.items():
        if obj not in item.masks.get(frame, {}):
            raise ValueError(f"video {item.name!r}: object {obj} is prompted at frame {frame}, which lacks its mask")


@attrs.frozen(eq=False)
class VideoItem:
    """One video and its objects.

    Attributes:
        name: the sequence name, unique within its dataset (its folder name).
        frame_paths: every frame's JPEG, in frame order; all in one folder (what ``init_state`` reads).
        masks: ground truth of the annotated frames only: ``{frame index: {object id: (H, W) bool}}``.
            Every object has a mask (possibly empty) in every annotated frame.
        prompts: ``{object id: frame index}``, the frame whose ground truth prompts the object (its first
            non-empty annotated frame).
        size: (H, W) of every frame and mask.
        void: ``{frame index: (H, W) bool}`` pixels labelled 255 (void) in palette annotations, if any.
        per_object_png: predictions are written one binary PNG per object (SA-V) rather than one palette
            PNG per frame (DAVIS); also means objects may overlap.
    """

    name: str
    frame_paths: list[Path] = attrs.field(converter=list)
    masks: Masks
    prompts: dict[int, int]
    size: tuple[int, int]
    void: dict[int, np.ndarray] = attrs.field(factory=dict)
    per_object_png: bool = False

    def __attrs_post_init__(self) -> None:
        _check(self)

    @property
    def frame_dir(self) -> Path:
        """The folder holding the frames."""
        return self.frame_paths[0].parent

    @property
    def frame_names(self) -> list[str]:
        """Each frame's file stem (``"00000"``), used to name prediction PNGs."""
        return [p.stem for p in self.frame_paths]

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def object_ids(self) -> list[int]:
        """The prompted objects, sorted."""
        return sorted(self.prompts)

    @property
    def annotated_frames(self) -> list[int]:
        """Indices of the frames with ground truth, sorted."""
        return sorted(self.masks)


class VideoDataset(IndexedDataset[VideoItem]):
    """A lazily loaded, indexable sequence of :class:`VideoItem` (see :class:`IndexedDataset`).

    Subclasses implement ``__len__`` and ``_load``, and may list ``names``.
    """

    name: str = "video"

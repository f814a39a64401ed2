"""What the schedule search runs on its calibration images: the encoder, and the model's own decoder if known.

A probe turns calibration images into model inputs once and, for the model as currently patched, returns
per image the image embedding and (where the model's decoder is known) the masks it decodes for a fixed
set of box prompts. Prompts need no labels: a ``boxes_per_side`` x ``boxes_per_side`` grid of boxes tiling
the encoder's input, plus one centred box of half its side, the same for every image and every schedule.

- Whole models of the harness's families (SAM, HQ-SAM, SAM 2 / 2.1, SAM 3, and transformers' and Ultralytics'
  versions; recognised by class name, :data:`FAMILY_CLASSES`): :class:`SegmenterProbe`, through
  :mod:`.segmenters` (each package's own prompt encoding and mask decoding). Images are
  (H, W, 3) uint8 arrays (or :class:`~.data.ImageItem`), stretched to the square input as HQ-SAM's protocol.
- Any other model a tomeplug adapter patches (an image encoder alone, a timm ViT, a third party's):
  :class:`EmbeddingProbe`, embedding cosine only; images are its preprocessed input, a (B, C, H, W)
  float tensor.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from tomeplug.adapter import class_paths

from .data.item import ImageItem
from .segmenters import Segmenter, make_segmenter

FAMILY_CLASSES = {
    "segment_anything.modeling.sam.Sam": "sam",
    "segment_anything_hq.modeling.sam.Sam": "hq_sam",
    "sam2.modeling.sam2_base.SAM2Base": "sam2",
    "sam3.model.sam3_image.Sam3Image": "sam3",
    "transformers.models.sam.modeling_sam.SamModel": "hf_sam",
    "transformers.models.sam_hq.modeling_sam_hq.SamHQModel": "hf_sam_hq",
    "transformers.models.sam2.modeling_sam2.Sam2Model": "hf_sam2",
    "transformers.models.sam3_tracker.modeling_sam3_tracker.Sam3TrackerModel": "hf_sam3",
    "ultralytics.models.sam.modules.sam.SAMModel": "ultralytics_sam",
    "ultralytics.models.sam.modules.sam.SAM2Model": "ultralytics_sam2",
}
"""Class path (the class or a base) -> the family whose decoder :mod:`.segmenters` knows (the harness's)."""
NO_PROBE_CLASSES = {"ultralytics.models.sam.modules.sam.SAM3Model": "its interactive predictor is not in the harness"}
"""Whole models of a known family's subclass that the family's segmenter cannot decode, with the reason."""


@attrs.frozen
class ProbeOutput:
    """One image's outputs: its embedding and (decoder known) one (H, W) bool mask per prompt, else None."""

    embedding: np.ndarray
    masks: np.ndarray | None


def model_family(model: nn.Module) -> str | None:
    """The harness family of a whole model whose decoder :mod:`.segmenters` knows (``"sam"``, ``"hq_sam"``,
    ``"sam2"``, ``"sam3"``, ``"hf_sam"``, ..., ``"ultralytics_sam2"``), else None (judged by class names)."""
    paths = class_paths(model)
    if paths & NO_PROBE_CLASSES.keys():
        return None
    return next((family for path, family in FAMILY_CLASSES.items() if path in paths), None)


def grid_boxes(side: int, boxes_per_side: int = 2) -> np.ndarray:
    """(K, 4) inclusive ``[x0, y0, x1, y1]`` boxes: a grid tiling a ``side`` square, then a centred half box."""
    if boxes_per_side < 1:
        raise ValueError(f"boxes_per_side must be >= 1, got {boxes_per_side}")
    edges = np.linspace(0, side, boxes_per_side + 1).round().astype(int)
    cells = list(itertools.pairwise(edges))
    boxes = [[x0, y0, x1 - 1, y1 - 1] for y0, y1 in cells for x0, x1 in cells]
    quarter = side // 4
    boxes.append([quarter, quarter, side - quarter - 1, side - quarter - 1])
    return np.array(boxes, np.float32)


class Probe:
    """Runs the model (as currently patched) on the calibration images; see the module docstring."""

    decoder: str | None
    """The decoder whose masks are compared (a harness family: ``"sam"``, ``"hf_sam2"``, ...), or None: embeddings
    only."""
    encoder: nn.Module
    """The module whose FLOPs and time count (the image encoder)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def run(self) -> list[ProbeOutput]:
        """Every calibration image's outputs, in order."""
        raise NotImplementedError

    def flops_input(self) -> tuple[Tensor, ...]:
        """The encoder's input for one image (FLOPs and timing)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What the probe feeds the model (pixels, prompts): part of every cache key."""
        raise NotImplementedError


def _image_array(image: Any) -> np.ndarray:
    array = image.image if isinstance(image, ImageItem) else image
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"calibration images for a SAM-family model must be (H, W, 3) uint8 RGB arrays (or ImageItems), "
            f"got {array.dtype} {array.shape}"
        )
    return array


def _digest_arrays(arrays: Iterable[np.ndarray | Tensor], extra: Any) -> str:
    sha = hashlib.sha1(repr(extra).encode())
    for array in arrays:
        data = array.detach().cpu().contiguous() if isinstance(array, Tensor) else np.ascontiguousarray(array)
        sha.update(str(tuple(data.shape)).encode())
        sha.update(data.view(torch.uint8).numpy().tobytes() if isinstance(data, Tensor) else data.tobytes())
    return sha.hexdigest()[:16]


class SegmenterProbe(Probe):
    """A whole model of a known family: embeddings and the decoded masks of the grid prompts."""

    def __init__(self, model: nn.Module, family: str, images: Sequence[Any], boxes_per_side: int = 2) -> None:
        self.decoder = family
        self.segmenter: Segmenter = make_segmenter(model, family)
        self.encoder = self.segmenter.encoder
        side = self.segmenter.input_size
        self.images = [cv2.resize(_image_array(i), (side, side), interpolation=cv2.INTER_LINEAR) for i in images]
        self.boxes = grid_boxes(side, boxes_per_side)

    def __len__(self) -> int:
        return len(self.images)

    def _batch(self, index: int) -> Tensor:
        return self.segmenter.preprocess([self.images[index]])

    def run(self) -> list[ProbeOutput]:
        seg, side = self.segmenter, (self.segmenter.input_size,) * 2
        outputs = []
        with torch.no_grad():
            for index in range(len(self.images)):
                features = seg.encode(self._batch(index))
                logits = seg.decode(features, 0, self.boxes, side, side)
                embedding = seg.embedding(features, 0).float().cpu().numpy()
                outputs.append(ProbeOutput(embedding, (logits > 0).cpu().numpy()))
        return outputs

    def flops_input(self) -> tuple[Tensor, ...]:
        return (self._batch(0),)

    def fingerprint(self) -> str:
        return _digest_arrays(self.images, {"decoder": self.decoder, "boxes": self.boxes.tolist()})


class EmbeddingProbe(Probe):
    """Any adapter's model: its output (every tensor it returns, flattened per image) as the embedding."""

    decoder = None

    def __init__(self, model: nn.Module, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError(
                f"{type(model).__name__} has no decoder tomeplug_eval knows (the harness's model families): give its "
                f"preprocessed input as calibration images, a (B, C, H, W) float tensor, not {type(images).__name__}"
            )
        self.encoder, self.images = model, images

    def __len__(self) -> int:
        return len(self.images)

    def run(self) -> list[ProbeOutput]:
        outputs = []
        with torch.no_grad():
            for index in range(len(self.images)):
                leaves = [t for t in tree_leaves(self.encoder(self.images[index : index + 1])) if isinstance(t, Tensor)]
                if not leaves:
                    raise ValueError(f"{type(self.encoder).__name__} returned no tensor to compare")
                flat = torch.cat([t.float().reshape(-1) for t in leaves]).cpu().numpy()
                outputs.append(ProbeOutput(flat, None))
        return outputs

    def flops_input(self) -> tuple[Tensor, ...]:
        return (self.images[:1],)

    def fingerprint(self) -> str:
        return _digest_arrays([self.images], {"decoder": None})


def make_probe(model: nn.Module, images: Any, boxes_per_side: int = 2) -> Probe:
    """The probe for ``model``: its family's decoder if it is a whole model of a known family, else embeddings."""
    family = model_family(model)
    if family is None:
        return EmbeddingProbe(model, images)
    images = list(images)
    if not images:
        raise ValueError("tune needs at least one calibration image")
    return SegmenterProbe(model, family, images, boxes_per_side)

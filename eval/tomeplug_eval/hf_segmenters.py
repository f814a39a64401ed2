"""Box-prompted segmentation with Hugging Face transformers' SAM-family models, as their processors do it.

The flow is the model card's: the model's image processor normalises (and, for SAM, pads) an image already
resized by the harness, ``get_image_embeddings`` encodes the batch (the part token merging changes, timed),
then per image the model's forward takes the embeddings and the boxes and the processor's
``post_process_masks`` upsamples the low-resolution logits to the original size. Families: ``hf_sam``
(``SamModel``), ``hf_sam_hq`` (``SamHQModel``: embeddings plus the global blocks' intermediate maps),
``hf_sam2`` (``Sam2Model``) and ``hf_sam3`` (``Sam3TrackerModel``, SAM 3's ViT with SAM 2's prompt decoder).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .segmenters import Segmenter, Size

HF_FAMILIES = ("hf_sam", "hf_sam_hq", "hf_sam2", "hf_sam3")
_PROCESSORS = {"hf_sam": "SamProcessor", "hf_sam_hq": "SamHQProcessor", "hf_sam2": "Sam2Processor"}
_PROCESSORS["hf_sam3"] = "Sam3TrackerProcessor"


def hf_processor(family: str, size: int) -> Any:
    """The family's processor for square ``size`` inputs, built offline from the image processor's defaults."""
    import transformers

    if family in ("hf_sam", "hf_sam_hq"):  # SAM resizes the longest side and pads to a square
        image = transformers.SamImageProcessor(size={"longest_edge": size}, pad_size={"height": size, "width": size})
    else:  # SAM 2 and SAM 3 stretch to a square
        image = transformers.Sam2ImageProcessor(size={"height": size, "width": size})
    return getattr(transformers, _PROCESSORS[family])(image_processor=image)


class HFSegmenter(Segmenter):
    """A transformers SAM-family model with box prompts (see the module docstring).

    Args:
        model: ``SamModel``, ``SamHQModel``, ``Sam2Model`` or ``Sam3TrackerModel``.
        family: one of :data:`HF_FAMILIES`, matching the model.
        hq_token_only: HQ-SAM only: the HQ token's mask alone (as HQ-SAM's evaluation), not its sum with SAM's.
    """

    def __init__(self, model: nn.Module, family: str, hq_token_only: bool = True) -> None:
        if family not in HF_FAMILIES:
            raise ValueError(f"unknown transformers family {family!r}; known: {', '.join(HF_FAMILIES)}")
        self.model, self.family, self.hq_token_only = model, family, hq_token_only
        self.encoder = model.vision_encoder
        size = self.encoder.config.image_size if family in ("hf_sam", "hf_sam_hq") else model.config.vision_config
        if not isinstance(size, int):  # SAM 2 / SAM 3: the backbone's (h, w) or an int
            size = size.backbone_config.image_size
            size = size[0] if isinstance(size, list | tuple) else size
        self.input_size = int(size)
        self.processor = hf_processor(family, self.input_size)

    def preprocess(self, images: list[np.ndarray]) -> Tensor:
        device = next(self.model.parameters()).device
        pixels = self.processor.image_processor(images, do_resize=False, return_tensors="pt")["pixel_values"]
        return pixels.to(device)

    def encode(self, batch: Tensor) -> Any:
        return self.model.get_image_embeddings(batch)

    def embedding(self, features: Any, i: int) -> Tensor:
        if self.family == "hf_sam":
            return features[i]
        return features[0][i] if self.family == "hf_sam_hq" else features[-1][i]

    def decode(self, features: Any, i: int, boxes: np.ndarray, input_hw: Size, size: Size) -> Tensor:
        box_tensor = torch.as_tensor(boxes, dtype=torch.float, device=self.embedding(features, i).device)[None]
        kwargs: dict[str, Any] = {"input_boxes": box_tensor, "multimask_output": False}
        if self.family == "hf_sam":
            kwargs["image_embeddings"] = features[i : i + 1]
        elif self.family == "hf_sam_hq":
            kwargs["image_embeddings"] = features[0][i : i + 1]
            kwargs["intermediate_embeddings"] = [t[i : i + 1] for t in features[1]]
            kwargs["hq_token_only"] = self.hq_token_only
        else:
            kwargs["image_embeddings"] = [f[i : i + 1] for f in features]
        masks = self.model(**kwargs).pred_masks  # (1, K, 1, h, w) low-resolution logits
        if self.family in ("hf_sam", "hf_sam_hq"):  # crop the padding at the input size, as SAM does
            return self.processor.post_process_masks(masks, [size], [input_hw], binarize=False)[0][:, 0]
        if tuple(input_hw) != (self.input_size, self.input_size):
            raise ValueError(f"{type(self.model).__name__} takes square {self.input_size}px inputs, got {input_hw}")
        return self.processor.post_process_masks(masks, [size], binarize=False)[0][:, 0]

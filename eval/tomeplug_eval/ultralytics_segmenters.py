"""Box-prompted segmentation with Ultralytics' SAM and SAM 2 models, through Ultralytics' own predictors.

The predictor (``Predictor`` for SAM, ``SAM2Predictor`` for SAM 2 / 2.1) is set up on the model as ``SAM(...)``
sets it up (device, normalisation constants); the batch is normalised with its mean and std, features come
from its ``get_im_features`` (the part token merging changes, timed), and the boxes go through its
``_prepare_prompts`` and ``_inference_features`` (prompt encoder and mask decoder). The low-resolution logits
are upsampled to the input, cropped to the image's resized extent and resized to the original size, as SAM's
``postprocess_masks`` does, so logits (not Ultralytics' thresholded masks) reach the metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .segmenters import Segmenter, Size

ULTRALYTICS_FAMILIES = ("ultralytics_sam", "ultralytics_sam2")


class UltralyticsSegmenter(Segmenter):
    """An Ultralytics ``SAMModel`` or ``SAM2Model`` with box prompts (see the module docstring)."""

    def __init__(self, model: nn.Module, family: str) -> None:
        from ultralytics.models.sam.predict import Predictor, SAM2Predictor

        if family not in ULTRALYTICS_FAMILIES:
            raise ValueError(f"unknown Ultralytics family {family!r}; known: {', '.join(ULTRALYTICS_FAMILIES)}")
        sam2 = family == "ultralytics_sam2"
        self.model, self.sam2 = model, sam2
        self.input_size = int(model.image_size if sam2 else model.image_encoder.img_size)
        device = next(model.parameters()).device
        overrides = {"imgsz": self.input_size, "device": str(device), "verbose": False, "save": False}
        self.predictor = (SAM2Predictor if sam2 else Predictor)(overrides=overrides)
        self.predictor.setup_model(model, verbose=False)
        self.predictor.imgsz = [self.input_size, self.input_size]
        if sam2:
            self.predictor._bb_feat_sizes = [[self.input_size // s] * 2 for s in (4, 8, 16)]
        self.encoder = model.image_encoder

    def preprocess(self, images: list[np.ndarray]) -> Tensor:
        """(B, 3, S, S) from square (S, S, 3) RGB images, normalised as the predictor does; smaller images are
        padded at the bottom and right as its letterbox pads them."""
        s, p = self.input_size, self.predictor
        batch = torch.zeros(len(images), 3, s, s, device=p.device)
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            batch[i, :, :h, :w] = (torch.from_numpy(image).to(p.device).permute(2, 0, 1).float() - p.mean) / p.std
        return batch

    def encode(self, batch: Tensor) -> Any:
        if not self.sam2:
            return self.predictor.get_im_features(batch)
        per_image = [self.predictor.get_im_features(batch[i : i + 1]) for i in range(batch.shape[0])]
        levels = zip(*(f["high_res_feats"] for f in per_image), strict=True)
        return {
            "image_embed": torch.cat([f["image_embed"] for f in per_image]),
            "high_res_feats": [torch.cat(level) for level in levels],
        }

    def embedding(self, features: Any, i: int) -> Tensor:
        return features["image_embed"][i] if self.sam2 else features[i]

    def decode(self, features: Any, i: int, boxes: np.ndarray, input_hw: Size, size: Size) -> Tensor:
        p, square = self.predictor, (self.input_size, self.input_size)
        prompts = p._prepare_prompts(square, square, bboxes=boxes)  # boxes are in the input frame already
        if self.sam2:
            logits, _ = p._inference_features(features, *prompts, multimask_output=False, img_idx=i)
        else:
            logits, _ = p._inference_features(features[i : i + 1], *prompts, multimask_output=False)
        masks = F.interpolate(logits[None].float(), square, mode="bilinear", align_corners=False)
        masks = masks[..., : input_hw[0], : input_hw[1]]
        return F.interpolate(masks, size, mode="bilinear", align_corners=False)[0]  # (K, H, W)

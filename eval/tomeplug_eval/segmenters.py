"""Box-prompted segmentation with an official model, split as SAM's predictors split it: encode, then decode.

:meth:`Segmenter.encode` runs the image encoder once for a batch of images (the part token merging changes,
the part that is timed); :meth:`Segmenter.decode` prompts one image's features with one box per object and
returns single-mask logits at the image's original size. Decoding goes through the official predictors
(``SamPredictor`` of segment_anything / segment_anything_hq, ``SAM2ImagePredictor``, SAM 3's SAM 1 task
predictor behind ``Sam3Image.predict_inst``) with their features set from the batch, so prompt encoding, mask
decoding and upsampling are exactly theirs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tomeplug.torchvision_compat import ensure_torchvision

Size = tuple[int, int]


class Segmenter:
    """One model family's encode/decode flow. ``input_size`` is the encoder's square input side."""

    input_size: int
    encoder: nn.Module

    def preprocess(self, images: list[np.ndarray]) -> Tensor:
        """(B, 3, S, S) model input from resized (H', W', 3) uint8 images."""
        raise NotImplementedError

    def encode(self, batch: Tensor) -> Any:
        """Run the image encoder on a preprocessed batch; returns the features ``decode`` needs."""
        raise NotImplementedError

    def embedding(self, features: Any, i: int) -> Tensor:
        """Image ``i``'s embedding (C, h, w): the map the mask decoder attends to."""
        raise NotImplementedError

    def decode(self, features: Any, i: int, boxes: np.ndarray, input_hw: Size, size: Size) -> Tensor:
        """(K, H, W) mask logits at the original ``size`` for K boxes (K, 4) given in the input frame."""
        raise NotImplementedError


class SamSegmenter(Segmenter):
    """SAM and HQ-SAM (``hq=True``: the encoder also returns intermediate embeddings for the HQ decoder).

    Args:
        model: an official ``Sam``.
        hq: whether it is HQ-SAM.
        hq_token_only: HQ-SAM only: use the HQ token's mask alone (as HQ-SAM's evaluation on DIS, COIFT,
            HRSOD and ThinObject does) rather than its sum with SAM's mask.
    """

    def __init__(self, model: nn.Module, hq: bool = False, hq_token_only: bool = True) -> None:
        ensure_torchvision()
        package = "segment_anything_hq" if hq else "segment_anything"
        predictor_cls = __import__(package, fromlist=["SamPredictor"]).SamPredictor
        self.model, self.hq, self.hq_token_only = model, hq, hq_token_only
        self.predictor = predictor_cls(model)
        self.encoder = model.image_encoder
        self.input_size = model.image_encoder.img_size

    def preprocess(self, images: list[np.ndarray]) -> Tensor:
        device = self.model.device
        tensors = [torch.tensor(image, device=device).permute(2, 0, 1)[None].float() for image in images]
        return torch.cat([self.model.preprocess(t) for t in tensors])  # normalised, padded to S x S

    def encode(self, batch: Tensor) -> Any:
        out = self.encoder(batch)
        return out if self.hq else (out, None)  # (features (B, C, h, w), intermediate embeddings or None)

    def embedding(self, features: Any, i: int) -> Tensor:
        return features[0][i]

    def decode(self, features: Any, i: int, boxes: np.ndarray, input_hw: Size, size: Size) -> Tensor:
        embeddings, interm = features
        p = self.predictor
        p.features, p.original_size, p.input_size, p.is_image_set = embeddings[i : i + 1], size, input_hw, True
        kwargs: dict[str, Any] = {}
        if self.hq:
            p.interm_features = [t[i : i + 1] for t in interm]
            kwargs["hq_token_only"] = self.hq_token_only
        box_tensor = torch.as_tensor(boxes, dtype=torch.float, device=embeddings.device)
        logits, _, _ = p.predict_torch(None, None, box_tensor, multimask_output=False, return_logits=True, **kwargs)
        return logits[:, 0]


class Sam2Segmenter(Segmenter):
    """SAM 2 / 2.1: Hiera trunk and FPN neck, then the image predictor's feature layout and decoder."""

    name = "SAM 2"

    def __init__(self, model: nn.Module) -> None:
        ensure_torchvision()
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.model = model
        self.predictor = SAM2ImagePredictor(model)
        self.encoder = model.image_encoder
        self.input_size = model.image_size

    def preprocess(self, images: list[np.ndarray]) -> Tensor:
        return self.predictor._transforms.forward_batch(images).to(self.model.device)

    def encode(self, batch: Tensor) -> Any:
        backbone = self.model.forward_image(batch)
        _, feats, _, sizes = self.model._prepare_backbone_features(backbone)
        if self.model.directly_add_no_mem_embed:  # as SAM2ImagePredictor.set_image_batch
            feats[-1] = feats[-1] + self.model.no_mem_embed
        return predictor_features(feats, sizes, batch.shape[0])

    def embedding(self, features: Any, i: int) -> Tensor:
        return features["image_embed"][i]

    def decode(self, features: Any, i: int, boxes: np.ndarray, input_hw: Size, size: Size) -> Tensor:
        if tuple(input_hw) != (self.input_size, self.input_size):
            raise ValueError(f"{self.name} takes square {self.input_size}x{self.input_size} inputs, got {input_hw}")
        p = self.predictor
        p._features = {"image_embed": features["image_embed"][i : i + 1]}
        p._features["high_res_feats"] = [f[i : i + 1] for f in features["high_res_feats"]]
        p._orig_hw, p._is_image_set, p._is_batch = [size], True, False
        box_tensor = torch.as_tensor(boxes, dtype=torch.float, device=features["image_embed"].device)
        logits, _, _ = p._predict(None, None, box_tensor, multimask_output=False, return_logits=True, img_idx=0)
        p._features, p._is_image_set = None, False
        return logits[:, 0]


def predictor_features(feats: list[Tensor], sizes: list[Size], batch: int) -> dict[str, Any]:
    """SAM 2's predictor layout of prepared backbone features: the last map as ``image_embed`` (B, C, h, w),
    the others as ``high_res_feats``."""
    maps = [f.permute(1, 2, 0).reshape(batch, -1, *s) for f, s in zip(feats, sizes, strict=True)]  # (B, C, h, w)
    return {"image_embed": maps[-1], "high_res_feats": maps[:-1]}


class Sam3Segmenter(Sam2Segmenter):
    """SAM 3 with box prompts: its vision backbone (ViT and FPN necks, as ``Sam3Processor.set_image``), then the
    SAM 1 task predictor ``predict_inst`` uses (the model must be built with ``enable_inst_interactivity``),
    which has SAM 2's image-predictor interface: the feature layout and the decoding are SAM 2's."""

    name = "SAM 3"

    def __init__(self, model: nn.Module) -> None:
        ensure_torchvision()
        if getattr(model, "inst_interactive_predictor", None) is None:
            raise ValueError(
                "box prompts on SAM 3 need its SAM 1 task predictor: "
                "build_sam3_image_model(enable_inst_interactivity=True)"
            )
        from sam3.model.sam3_image_processor import Sam3Processor

        self.model, self.predictor = model, model.inst_interactive_predictor
        self.input_size = self.predictor.model.image_size
        self.transform = Sam3Processor(model, resolution=self.input_size, device="cpu").transform
        self.encoder = model.backbone.vision_backbone

    def preprocess(self, images: list[np.ndarray]) -> Tensor:
        device = next(self.model.parameters()).device
        return torch.stack([self.transform(torch.from_numpy(image).permute(2, 0, 1)) for image in images]).to(device)

    def encode(self, batch: Tensor) -> Any:
        tracker = self.predictor.model
        backbone = self.model.backbone.forward_image(batch)["sam2_backbone_out"]
        fpn = backbone["backbone_fpn"]  # as Sam3Processor.set_image: the decoder's high-resolution projections
        fpn[0], fpn[1] = tracker.sam_mask_decoder.conv_s0(fpn[0]), tracker.sam_mask_decoder.conv_s1(fpn[1])
        _, feats, _, sizes = tracker._prepare_backbone_features(backbone)
        feats[-1] = feats[-1] + tracker.no_mem_embed  # as predict_inst
        return predictor_features(feats, sizes, batch.shape[0])


def make_segmenter(model: nn.Module, family: str, hq_token_only: bool = True) -> Segmenter:
    """The segmenter of a model family: ``"sam"``, ``"hq_sam"``, ``"sam2"``, ``"sam3"`` or a transformers
    family (``"hf_sam"``, ``"hf_sam_hq"``, ``"hf_sam2"``, ``"hf_sam3"``) or an Ultralytics one (``"ultralytics_sam"``,
    ``"ultralytics_sam2"``)."""
    if family.startswith("ultralytics_"):
        from .ultralytics_segmenters import UltralyticsSegmenter

        return UltralyticsSegmenter(model, family)
    if family.startswith("hf_"):
        from .hf_segmenters import HFSegmenter

        return HFSegmenter(model, family, hq_token_only=hq_token_only)
    if family == "sam2":
        return Sam2Segmenter(model)
    if family == "sam3":
        return Sam3Segmenter(model)
    if family in ("sam", "hq_sam"):
        return SamSegmenter(model, hq=family == "hq_sam", hq_token_only=hq_token_only)
    raise ValueError(
        f"unknown model family {family!r}; known: sam, hq_sam, sam2, sam3, hf_sam, hf_sam_hq, hf_sam2, hf_sam3"
    )

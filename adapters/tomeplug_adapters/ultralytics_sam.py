"""Ultralytics' vendored SAM, SAM 2 and SAM 3 image encoders: the research adapters on Ultralytics' classes.

Ultralytics (``ultralytics.models.sam``) ships copies of the three encoders whose blocks compute what the
research packages' blocks compute, under the same module and parameter names. Each adapter here is the
research adapter with Ultralytics' class paths, so the merging math, the scopes (``attn``, ``block``,
``span``) and their semantics are those of :mod:`tomeplug_adapters.sam_vit`, :mod:`tomeplug_adapters.sam2_hiera`
and :mod:`tomeplug_adapters.sam3_vit`:

- ``ultralytics_sam_vit``: ``SAMModel`` or its ``ImageEncoderViT`` (SAM ViT-B/L/H; ``modules.blocks.Block``
  and ``REAttention``, decomposed relative positions). The one difference from segment_anything is in the
  encoder: it resizes the absolute positions to the patch grid when the predictor's ``imgsz`` differs from
  the built size, which the span-scope loop does too (:class:`MergingUltralyticsSamEncoder`).
- ``ultralytics_sam2_hiera``: ``SAM2Model`` (and subclasses, e.g. the video predictor's), its
  ``ImageEncoder`` or the ``Hiera`` trunk (``MultiScaleBlock``, ``MultiScaleAttention``, q-pooling).
- ``ultralytics_sam2_memory_attention`` (target ``"memory_attention"``): ``SAM2Model`` (and subclasses: the
  interactive SAM 3 tracker ``SAM3Model`` of ``build_interactive_sam3`` too, whose memory attention is the same
  ``MemoryAttention`` at SAM 3's sizes) or its ``MemoryAttention``: the frame's tokens merged in the memory-attention
  layers, as
  :mod:`tomeplug_adapters.sam2_memory_attention` (``RoPEAttention`` and the layers are Ultralytics' copies).
- ``ultralytics_sam3_vit``: ``models.sam.sam3.vitdet.ViT`` alone or inside any Ultralytics SAM model that
  holds exactly one (``SAM3Model``'s backbone, ``SAM3SemanticModel``). Its attention keeps ``freqs_cis`` as a
  plain attribute (it stays on the CPU when the model moves); merged tokens gather their rotations on the
  tokens' device as upstream moves the table.

:class:`~ultralytics.models.sam.SAM`'s predictors (``Predictor``, ``SAM2Predictor``, ``SAM3Predictor``) run
patched models unchanged. The limits of the research adapters hold here too (SAM 3: no class token, span
scope not with ``compile_mode``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tomeplug_adapters.sam2_hiera import Sam2HieraAdapter
from tomeplug_adapters.sam2_memory_attention import Sam2MemoryAttentionAdapter
from tomeplug_adapters.sam3_vit import Sam3ViTAdapter
from tomeplug_adapters.sam_vit import SamViTAdapter
from tomeplug_adapters.sam_vit_scopes import MergingSamEncoder

__all__ = [
    "UltralyticsSam2HieraAdapter",
    "UltralyticsSam2MemoryAttentionAdapter",
    "UltralyticsSam3ViTAdapter",
    "UltralyticsSamViTAdapter",
]

MODULES = "ultralytics.models.sam.modules"


class MergingUltralyticsSamEncoder(MergingSamEncoder):
    """Mixin over Ultralytics' ``ImageEncoderViT`` (scope ``span``): absolute positions resized to the grid."""

    def add_abs_pos(self, x: Tensor) -> Tensor:
        """The patch embeddings (B, H, W, C) plus the absolute positions, resized (nearest) to their grid
        when it differs from the built one, as Ultralytics' encoder does."""
        pos = self.pos_embed
        if pos is None:
            return x
        if pos.shape[1:3] != x.shape[1:3]:
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3]).permute(0, 2, 3, 1)
        return x + pos


class UltralyticsSamViTAdapter(SamViTAdapter):
    """Ultralytics' SAMModel with a ViT encoder (SAM ViT-B/L/H; not MobileSAM's TinyViT) or ImageEncoderViT"""

    name = "ultralytics_sam_vit"
    model_classes = (f"{MODULES}.sam.SAMModel",)
    encoder_class = f"{MODULES}.encoders.ImageEncoderViT"
    encoder_mixin = MergingUltralyticsSamEncoder


class UltralyticsSam2HieraAdapter(Sam2HieraAdapter):
    """Ultralytics' SAM2Model (and subclasses), ImageEncoder or Hiera (SAM 2 / 2.1)"""

    name = "ultralytics_sam2_hiera"
    classes = (f"{MODULES}.sam.SAM2Model", f"{MODULES}.encoders.ImageEncoder", f"{MODULES}.encoders.Hiera")


class UltralyticsSam2MemoryAttentionAdapter(Sam2MemoryAttentionAdapter):
    """Ultralytics' SAM2Model (and subclasses, SAM3Model too) or MemoryAttention: the frame's tokens"""

    name = "ultralytics_sam2_memory_attention"
    classes = (f"{MODULES}.sam.SAM2Model", f"{MODULES}.memory_attention.MemoryAttention")


class UltralyticsSam3ViTAdapter(Sam3ViTAdapter):
    """Ultralytics' SAM 3 ViT, alone or inside an Ultralytics SAM model holding one (SAM3Model, SAM3SemanticModel)"""

    name = "ultralytics_sam3_vit"
    vit_class = "ultralytics.models.sam.sam3.vitdet.ViT"
    package = "ultralytics.models.sam."

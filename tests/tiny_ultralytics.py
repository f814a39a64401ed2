"""Tiny random-weight Ultralytics SAM models, built with Ultralytics' own classes and builders, offline.

tests/conftest.py keeps Ultralytics offline and quiet, with a private settings folder (``YOLO_OFFLINE``,
``YOLO_VERBOSE``, ``YOLO_CONFIG_DIR``), before any test imports ``ultralytics``.
The encoders have the dimensions of the research packages' tiny models in ``tiny_models`` so the same
weights load into both.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

from tiny_models import _randomise
from torch import nn

from tomeplug_eval.architectures import TINY_SAM3_VIT


def tiny_sam_encoder(img_size: int = 256, seed: int = 0, **layout) -> nn.Module:
    """Ultralytics' ``ImageEncoderViT`` as ``tiny_models.tiny_sam_encoder`` builds segment_anything's: embed 64,
    4 heads, depth 4, 16x16 grid, windows of 5 (padded), global blocks 1 and 3 (``layout``: depth and
    ``global_attn_indexes``)."""
    from ultralytics.models.sam.modules.encoders import ImageEncoderViT

    encoder = ImageEncoderViT(
        img_size=img_size, patch_size=16, embed_dim=64, depth=layout.get("depth", 4), num_heads=4, out_chans=32,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=5,
        global_attn_indexes=tuple(layout.get("global_attn_indexes", (1, 3))),
    )  # fmt: skip
    return _randomise(encoder, seed)


def tiny_sam(seed: int = 0) -> nn.Module:
    """Ultralytics' ``SAMModel`` from its own builder (1024 px, 14x14 windows, prompt width 256) with a tiny
    encoder (embed 64, 4 heads, depth 4, global blocks 1 and 3), random non-trivial weights. Run it through
    the predictor at a small ``imgsz`` (e.g. 256: a 16x16 grid on padded windows)."""
    from ultralytics.models.sam.build import _build_sam

    return _randomise(_build_sam(64, 4, 4, [1, 3]), seed)


def tiny_hiera(seed: int = 0, **fields) -> nn.Module:
    """Ultralytics' ``Hiera`` as ``tiny_models.tiny_hiera`` builds sam2's: embed 16, stages (2, 3, 5, 2), windows
    (8, 4, 6, 3), block 8 global (runs of windowed blocks, q-pooling, padded windows at 128 px)."""
    from ultralytics.models.sam.modules.encoders import Hiera

    options = dict(embed_dim=16, num_heads=1, stages=(2, 3, 5, 2), window_spec=(8, 4, 6, 3), global_att_blocks=(8,))
    return _randomise(Hiera(window_pos_embed_bkg_spatial_size=(4, 4), **{**options, **fields}), seed)


def tiny_sam2(seed: int = 0) -> nn.Module:
    """Ultralytics' ``SAM2Model`` from its own builder (memory attention, decoder and neck at their sizes) with
    a tiny Hiera trunk (embed 16, stages (1, 2, 3, 2), windows (8, 4, 6, 3), block 5 global), random
    non-trivial weights. Run it through the predictor at a small ``imgsz`` (e.g. 128)."""
    from ultralytics.models.sam.build import _build_sam2

    model = _build_sam2(
        encoder_embed_dim=16, encoder_stages=(1, 2, 3, 2), encoder_num_heads=1, encoder_global_att_blocks=(5,),
        encoder_backbone_channel_list=[128, 64, 32, 16], encoder_window_spatial_size=(4, 4),
        encoder_window_spec=(8, 4, 6, 3),
    )  # fmt: skip
    return _randomise(model, seed)


def tiny_sam3_vit(seed: int = 0, **fields) -> nn.Module:
    """Ultralytics' SAM 3 ``ViT`` with the arguments of ``tiny_models.tiny_sam3_vit`` (140 px, a 10x10 grid, 4x4
    windows padded to 12x12, global blocks 2 and 4, LayerScale, RoPE, relative positions in block 1)."""
    from ultralytics.models.sam.sam3.vitdet import ViT

    return _randomise(ViT(**{**TINY_SAM3_VIT, "depth": 5, "global_att_blocks": (2, 4), **fields}), seed)


def tiny_sam3(seed: int = 0) -> nn.Module:
    """Ultralytics' interactive ``SAM3Model`` (point and box prompts, ``SAM3Predictor``) from its own builder
    ``build_interactive_sam3`` with the tiny ViT above in its backbone (the builder's ``ViT`` replaced for the
    call; memory attention, necks and decoder at their sizes) and an empty checkpoint, random non-trivial
    weights. Run it through the predictor at ``imgsz=140``."""
    import torch
    from ultralytics.models.sam import build_sam3

    vit = build_sam3.ViT
    build_sam3.ViT = lambda **builder_args: vit(**{**builder_args, **TINY_SAM3_VIT})
    with tempfile.TemporaryDirectory() as folder:
        empty = Path(folder) / "empty.pt"
        torch.save({}, empty)
        try:
            model = build_sam3.build_interactive_sam3(str(empty))
        finally:
            build_sam3.ViT = vit
    return _randomise(model, seed)


def sam_interface(model: nn.Module, name: str) -> nn.Module:
    """Ultralytics' ``SAM`` interface around ``model`` (no weights loaded): ``name`` picks the predictor as
    ``SAM(name)`` does (``sam_b.pt``: SAM, ``sam2_t.pt``: SAM 2, ``sam3.pt``: SAM 3)."""
    from ultralytics import SAM

    class PrebuiltSAM(SAM):
        def _load(self, weights: str, task: str | None = None) -> None:
            self.model = model

    return PrebuiltSAM(name)

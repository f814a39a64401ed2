"""Ultralytics' SAM-family models (its vendored SAM and SAM 2 / 2.1), built by Ultralytics' own builders.

Random weights come from the official-size builders (``build_sam_vit_b`` ... ``build_sam2_l``) called without a
checkpoint, so nothing is downloaded; the tiny test models come from the same private builders with small
encoders (Ultralytics fixes the input at 1024 px and the decoders at width 256). Checkpoints are Ultralytics'
own files (``sam_b.pt``, ``sam2.1_t.pt``, ...), loaded strictly by :mod:`.model_catalog`.
"""

from __future__ import annotations

from torch import nn

from tomeplug.torchvision_compat import ensure_torchvision


def _build() -> object:
    ensure_torchvision()
    try:
        from ultralytics.models.sam import build
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("ultralytics_* models need ultralytics: pip install -e '.[ultralytics]'") from error
    return build


def ultralytics_sam(builder: str) -> nn.Module:
    """The random-initialised model of Ultralytics' ``build_<builder>`` (``sam_vit_b``, ``sam2_t``, ...)."""
    return getattr(_build(), f"build_{builder}")(checkpoint=None).eval()


def ultralytics_sam_tiny() -> nn.Module:
    """Ultralytics' ``SAMModel`` with a ViT of embed 64, depth 4, 4 heads, global blocks 1 and 3 (1024 px)."""
    return _build()._build_sam(64, 4, 4, [1, 3]).eval()


def ultralytics_sam2_tiny() -> nn.Module:
    """Ultralytics' ``SAM2Model`` with a Hiera of embed 16, stages 1-2-3-2, windows 8-4-6-3, global block 5."""
    return _build()._build_sam2(16, [1, 2, 3, 2], 1, [5], [128, 64, 32, 16], [4, 4], [8, 4, 6, 3]).eval()

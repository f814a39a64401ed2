"""The SDPA dense baseline for SAM ViT encoders: upstream's attention through ``scaled_dot_product_attention``.

segment_anything (and HQ-SAM, and Ultralytics' copy) compute attention by hand: ``softmax(q k^T * scale +
rel-pos)``, materialising the (N x N) logits in float32. A speed-minded user runs the same attention as one
SDPA call with the decomposed relative positions as an additive mask, as transformers'
``SamVisionSdpaAttention`` does. :func:`use_sdpa` gives every dense SAM attention of an encoder that form
(same outputs up to rounding), so ``bench/encoder_speed.py --baseline sdpa`` times merging against it; the
merged attention already uses SDPA. SAM 2 Hiera, SAM 3 and transformers' SDPA models need nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.adapter import class_path
from tomeplug.classswap import is_swapped
from tomeplug_adapters.sam_vit_attention import resized_rel_pos

SAM_ATTENTIONS = {
    "segment_anything.modeling.image_encoder.Attention",
    "segment_anything_hq.modeling.image_encoder.Attention",
    "ultralytics.models.sam.modules.blocks.REAttention",
}


def axis_table(rel_pos: Tensor, size: int) -> Tensor:
    """(size, size, C): the relative-position embedding of every (query, key) pair along one axis."""
    coords = torch.arange(size, device=rel_pos.device)
    return resized_rel_pos(rel_pos, size)[coords[:, None] - coords[None, :] + size - 1]


class SdpaSamAttention(nn.Module):
    """Mixin over SAM's ViT ``Attention``: one SDPA call, the decomposed relative positions as its mask."""

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, hd)
        bias = None
        if self.use_rel_pos:
            grid = q.reshape(b, self.num_heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, axis_table(self.rel_pos_h, h).to(q.dtype))
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, axis_table(self.rel_pos_w, w).to(q.dtype))
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


_SDPA_CLASSES: dict[type, type] = {}


def use_sdpa(encoder: nn.Module) -> int:
    """Give every SAM ViT attention of ``encoder`` that tomeplug did not patch the SDPA form; how many."""
    count = 0
    for module in encoder.modules():
        if class_path(module) in SAM_ATTENTIONS and not is_swapped(module):
            base = type(module)
            if base not in _SDPA_CLASSES:
                _SDPA_CLASSES[base] = type(f"Sdpa{base.__name__}", (SdpaSamAttention, base), {})
            module.__class__ = _SDPA_CLASSES[base]
            count += 1
    return count

"""SAM ViT (segment_anything) and HQ-SAM (segment_anything_hq): merging in the encoder's attention.

Both packages share the ViT encoder design: blocks run attention on 14x14 windows (zero-padded at the
grid's edge) or on the whole grid, with decomposed relative positions. The merging attention plans a
merge per attention call (the batch of windows is one batch of token groups), attends over the merged
tokens with the relative positions of each merged token's kept token, projects, and unmerges.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.adapter import Adapter, class_path
from tomeplug.classswap import swap_class
from tomeplug.config import StrategyConfig
from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan


def resized_rel_pos(rel_pos: Tensor, size: int) -> Tensor:
    """The (2 * size - 1, C) relative-position table for a size-long axis, interpolated as SAM does."""
    length = 2 * size - 1
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return resized.reshape(-1, length).permute(1, 0)


def rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, kept: Tensor, grid: tuple[int, int]) -> Tensor:
    """SAM's decomposed relative-position logits between merged tokens, at their kept tokens' cells.

    Args:
        q: (B', heads, M, hd) queries of the merged tokens.
        rel_pos_h, rel_pos_w: the attention module's relative-position parameters.
        kept: (B', M) the kept token (row-major index into the h x w grid) of every merged token.
        grid: (h, w) of the attention call.
    Returns:
        (B', heads, M, M) additive attention bias.
    """
    h, w = grid
    heads = q.shape[1]
    row, col = kept // w, kept % w  # (B', M)
    bias = None
    for coord, size, rel_pos in ((row, h, rel_pos_h), (col, w, rel_pos_w)):
        table = resized_rel_pos(rel_pos, size).to(q.dtype)  # (2 * size - 1, hd)
        logits = q @ table.T  # (B', heads, M, 2 * size - 1)
        offset = (coord.unsqueeze(2) - coord.unsqueeze(1) + (size - 1)).unsqueeze(1)  # (B', 1, M, M)
        term = logits.gather(-1, offset.expand(-1, heads, -1, -1))  # (B', heads, M, M)
        bias = term if bias is None else bias.add_(term)
    return bias


def merged_attention(
    attn: nn.Module, tokens: Tensor, plan: MergePlan, grid: tuple[int, int], prop_attn: bool
) -> Tensor:
    """SAM's attention over merged tokens: (B', N, C) -> (B', N, C), projection before the unmerge."""
    merged = plan.merge(tokens)  # (B', M, C)
    b, m, c = merged.shape
    q, k, v = attn.qkv(merged).reshape(b, m, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)  # (B', heads, M, hd)
    bias = rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, plan.kept, grid) if attn.use_rel_pos else None
    if prop_attn:
        log_size = plan.size.log().to(q.dtype)[:, None, None, :]  # (B', 1, 1, M)
        bias = log_size if bias is None else bias + log_size
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)  # (B', heads, M, hd)
    out = attn.proj(out.transpose(1, 2).reshape(b, m, c))  # per-token linear: exact before the unmerge
    return plan.unmerge(out)


class MergingSamAttention(nn.Module):
    """Mixin over SAM's ``Attention``: merges each attention call's tokens per ``tomeplug_config``."""

    tomeplug_config: StrategyConfig

    def forward(self, x: Tensor) -> Tensor:
        config = self.tomeplug_config
        b, h, w, c = x.shape  # B' = batch x windows
        n = h * w
        if config.num_to_merge(n) == 0:
            return super().forward(x)
        tokens = x.reshape(b, n, c)
        plan = plan_merge(config, tokens, self.qkv, self.num_heads, (h, w))
        return merged_attention(self, tokens, plan, (h, w), config.prop_attn).reshape(b, h, w, c)


class SamViTAdapter(Adapter):
    """segment_anything's Sam or ImageEncoderViT (SAM ViT-B/L/H)"""

    name = "sam_vit"
    package = "segment_anything"

    def _encoder(self, model: nn.Module) -> nn.Module | None:
        path = class_path(model)
        if path == f"{self.package}.modeling.sam.Sam":
            model = model.image_encoder
            path = class_path(model)
        return model if path == f"{self.package}.modeling.image_encoder.ImageEncoderViT" else None

    def matches(self, model: nn.Module) -> bool:
        """True for the package's ``Sam`` with a ViT encoder, or the ``ImageEncoderViT`` itself."""
        return self._encoder(model) is not None

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The encoder's ``blocks``, windowed and global alike."""
        encoder = self._encoder(model)
        if encoder is None:
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(encoder.blocks)

    def patch_block(self, block: nn.Module, config: StrategyConfig) -> None:
        """Swap the block's attention for the merging one."""
        swap_class(block.attn, MergingSamAttention)
        block.attn.tomeplug_config = config


class HQSamViTAdapter(SamViTAdapter):
    """segment_anything_hq's Sam or ImageEncoderViT (HQ-SAM ViT-B/L/H)"""

    name = "hq_sam_vit"
    package = "segment_anything_hq"

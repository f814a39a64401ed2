"""SAM 2 / 2.1 (sam2) Hiera: merging in the trunk's ``MultiScaleAttention``.

A Hiera block hands its attention one batch of attention calls shaped (B', h, w, C): the windows of a
windowed block (zero-padded at the grid's edge, B' = batch x windows), or the whole map of a global
block (B' = batch). Hiera's attention has no positional terms (positions are added once, at the
trunk's input), so a merged token needs none gathered. Every call plans a merge of its h * w tokens.

Windowed and global blocks merge every token before qkv, attend over the merged tokens, project
(per token and linear, so exact before the unmerge) and unmerge.

Stage-transition blocks pool the queries (``q_pool``, a 2x2 max pool of q): their output has one row
per pooled query, so there is nothing to unmerge. They merge keys and values only: q is computed from
the unmerged tokens and pooled as upstream does (max pooling does not commute with averaging), k and v
are computed from the merged tokens (exactly the merge of per-token k and v: qkv is affine and a merge
is an average), and every pooled query attends over the merged keys.

The metric and the padding option are the shared ones (:func:`tomeplug.metric.plan_merge`): the
attention input (in a q-pooling block, its fewer input channels) or the keys, averaged over heads. The
zero-padding tokens of edge windows (Hiera-T/S/B+ pad 64x64 maps into 14x14 windows at 1024 px) are
keys to upstream's attention; they merge like real tokens unless ``exclude_padding`` keeps them apart.
The block crops their output rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.adapter import Adapter, class_path, class_paths
from tomeplug.classswap import swap_class
from tomeplug.config import StrategyConfig
from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan

SAM2_BASE = "sam2.modeling.sam2_base.SAM2Base"
IMAGE_ENCODER = "sam2.modeling.backbones.image_encoder.ImageEncoder"
HIERA = "sam2.modeling.backbones.hieradet.Hiera"


def hiera_trunk(model: nn.Module) -> nn.Module | None:
    """The Hiera trunk of a ``SAM2Base`` (or subclass), an ``ImageEncoder`` or a ``Hiera``; else None."""
    if SAM2_BASE in class_paths(model):
        model = model.image_encoder
    if IMAGE_ENCODER in class_paths(model):
        model = model.trunk
    return model if HIERA in class_paths(model) else None


def _mask(log_size: Tensor | None, q: Tensor) -> Tensor | None:
    """The additive attention mask in the queries' dtype (under autocast q may differ from the input)."""
    return None if log_size is None else log_size.to(q.dtype)


def merged_attention(attn: nn.Module, x: Tensor, plan: MergePlan, prop_attn: bool) -> Tensor:
    """Hiera's attention with the tokens of each call merged by ``plan``.

    Args:
        attn: the block's ``MultiScaleAttention``.
        x: (B', h, w, C) the attention calls' input.
        plan: the merge of each call's h * w tokens into M.
        prop_attn: add ``log(size)`` of the merged keys to the attention logits.
    Returns:
        (B', h, w, C_out), or (B', h', w', C_out) with the queries pooled in a q-pooling block.
    """
    b, h, w, c = x.shape
    heads, d = attn.num_heads, attn.dim_out
    tokens = x.reshape(b, h * w, c)
    merged = plan.merge(tokens)  # (B', M, C)
    m = merged.shape[1]
    log_size = plan.size.log()[:, None, None, :] if prop_attn else None  # (B', 1, 1, M)
    if attn.q_pool is None:
        qkv = attn.qkv(merged).reshape(b, m, 3, heads, -1)  # (B', M, 3, heads, hd) as upstream
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B', heads, M, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(log_size, q))  # (B', heads, M, hd)
        out = attn.proj(out.transpose(1, 2).reshape(b, m, d))  # (B', M, C_out), exact before the unmerge
        return plan.unmerge(out).reshape(b, h, w, d)
    weight, bias = attn.qkv.weight, attn.qkv.bias  # rows: q, k, v, each (heads x hd)
    q = F.linear(tokens, weight[:d], None if bias is None else bias[:d])  # (B', N, C_out)
    q = attn.q_pool(q.reshape(b, h, w, d).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B', h', w', C_out)
    hq, wq = q.shape[1:3]
    q = q.reshape(b, hq * wq, heads, -1).transpose(1, 2)  # (B', heads, h' * w', hd)
    kv = F.linear(merged, weight[d:], None if bias is None else bias[d:]).reshape(b, m, 2, heads, -1)
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B', heads, M, hd)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(log_size, q))  # (B', heads, h' * w', hd)
    return attn.proj(out.transpose(1, 2).reshape(b, hq, wq, d))


class MergingMultiScaleAttention(nn.Module):
    """Mixin over Hiera's ``MultiScaleAttention``: merges each attention call per ``tomeplug_config``."""

    tomeplug_config: StrategyConfig

    def forward(self, x: Tensor) -> Tensor:
        config = self.tomeplug_config
        b, h, w, c = x.shape  # B' = batch x windows
        if config.num_to_merge(h * w) == 0:
            return super().forward(x)
        plan = plan_merge(config, x.reshape(b, h * w, c), self.qkv, self.num_heads, (h, w))
        return merged_attention(self, x, plan, config.prop_attn)


class Sam2HieraAdapter(Adapter):
    """sam2's SAM2Base (and subclasses, e.g. SAM2VideoPredictor), ImageEncoder or Hiera (SAM 2 / 2.1)"""

    name = "sam2_hiera"

    def matches(self, model: nn.Module) -> bool:
        """True for a ``SAM2Base`` or ``ImageEncoder`` with a Hiera trunk, or the ``Hiera`` itself."""
        return hiera_trunk(model) is not None

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The trunk's ``blocks``: windowed, global and q-pooling alike (Hiera-L has 48)."""
        trunk = hiera_trunk(model)
        if trunk is None:
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(trunk.blocks)

    def patch_block(self, block: nn.Module, config: StrategyConfig) -> None:
        """Swap the block's attention for the merging one."""
        swap_class(block.attn, MergingMultiScaleAttention)
        block.attn.tomeplug_config = config

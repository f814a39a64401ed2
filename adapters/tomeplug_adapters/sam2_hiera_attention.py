"""SAM 2 Hiera attention over merged tokens: one SDPA call per batch of attention calls, no positions.

Hiera's attention has no positional terms (positions are added once, at the trunk's input), so merged
tokens need none gathered; proportional attention adds ``log(size)`` of the keys as an additive mask.
The cases (windowed, global, q-pooling blocks) are described in :mod:`tomeplug_adapters.sam2_hiera`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan, log_size_bias
from tomeplug.setting import Setting


def _mask(log_size: Tensor | None, q: Tensor) -> Tensor | None:
    """The additive attention mask in the queries' dtype (under autocast q may differ from the input)."""
    return None if log_size is None else log_size.to(q.dtype)


def proportional_bias(plan: MergePlan, prop_attn: bool) -> Tensor | None:
    """The (B', 1, 1, M) proportional-attention bias ``log(size)`` of a plan's merged keys, or None."""
    return log_size_bias(plan.size, plan.size.dtype) if prop_attn else None


def attend(attn: nn.Module, merged: Tensor, log_size: Tensor | None) -> Tensor:
    """Hiera's attention (no q-pooling) over merged tokens: (B', M, C) -> (B', M, C_out), projection included.

    ``log_size`` is the (B', 1, 1, M) proportional-attention bias, or None.
    """
    b, m, _ = merged.shape
    qkv = attn.qkv(merged).reshape(b, m, 3, attn.num_heads, -1)  # (B', M, 3, heads, hd) as upstream
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B', heads, M, hd)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(log_size, q))  # (B', heads, M, hd)
    return attn.proj(out.transpose(1, 2).reshape(b, m, attn.dim_out))  # per token and linear


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
    log_size = proportional_bias(plan, prop_attn)  # (B', 1, 1, M) or None
    if attn.q_pool is None:
        return plan.unmerge(attend(attn, merged, log_size)).reshape(b, h, w, d)  # projection before the unmerge
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
    """Mixin over Hiera's ``MultiScaleAttention``: merges each attention call per ``tomeplug_setting``."""

    tomeplug_setting: Setting

    def forward(self, x: Tensor) -> Tensor:
        setting = self.tomeplug_setting
        b, h, w, c = x.shape  # B' = batch x windows
        if setting.num_to_merge(h * w) == 0:
            return super().forward(x)
        plan = plan_merge(setting, x.reshape(b, h * w, c), self.qkv, self.num_heads, (h, w))
        return merged_attention(self, x, plan, setting.prop_attn)

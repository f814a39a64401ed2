"""SAM 2 Hiera attention over merged tokens: one SDPA call per batch of attention calls, no positions.

Hiera's attention has no positional terms (positions are added once, at the trunk's input), so merged
tokens need none gathered; proportional attention adds ``log(size)`` of the keys as an additive mask.
The cases (windowed, global, q-pooling blocks) are described in :mod:`tomeplug_adapters.sam2_hiera`.
"""

from __future__ import annotations

from collections.abc import Callable

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


AttentionCore = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
"""Softmax attention (q, k, v: (B', heads, N, hd); an additive mask or None) -> (B', Nq, heads, hd)."""


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """sam2 Hiera's attention core: torch's SDPA, (B', heads, Nq, hd) -> (B', Nq, heads, hd)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


def attend(attn: nn.Module, merged: Tensor, log_size: Tensor | None, core: AttentionCore = sdpa) -> Tensor:
    """Hiera's attention (no q-pooling) over merged tokens: (B', M, C) -> (B', M, C_out), projection included.

    ``log_size`` is the (B', 1, 1, M) proportional-attention bias, or None; ``core`` the softmax attention.
    """
    b, m, _ = merged.shape
    qkv = attn.qkv(merged).reshape(b, m, 3, attn.num_heads, -1)  # (B', M, 3, heads, hd) as upstream
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B', heads, M, hd)
    out = core(q, k, v, _mask(log_size, q))  # (B', M, heads, hd)
    return attn.proj(out.reshape(b, m, attn.dim_out))  # per token and linear


def merged_attention(
    attn: nn.Module, x: Tensor, plan: MergePlan, prop_attn: bool, core: AttentionCore = sdpa
) -> Tensor:
    """Hiera's attention with the tokens of each call merged by ``plan``.

    Args:
        attn: the block's ``MultiScaleAttention`` (``qkv``, ``proj``, ``num_heads``, ``dim_out``, ``q_pool``:
            a pooling of (B', C, h, w) queries, or None).
        x: (B', h, w, C) the attention calls' input.
        plan: the merge of each call's h * w tokens into M.
        prop_attn: add ``log(size)`` of the merged keys to the attention logits.
        core: the softmax attention (:data:`AttentionCore`).
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
        return plan.unmerge(attend(attn, merged, log_size, core)).reshape(b, h, w, d)  # projection before the unmerge
    weight, bias = attn.qkv.weight, attn.qkv.bias  # rows: q, k, v, each (heads x hd)
    q = F.linear(tokens, weight[:d], None if bias is None else bias[:d])  # (B', N, C_out)
    q = attn.q_pool(q.reshape(b, h, w, d).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B', h', w', C_out)
    hq, wq = q.shape[1:3]
    q = q.reshape(b, hq * wq, heads, -1).transpose(1, 2)  # (B', heads, h' * w', hd)
    kv = F.linear(merged, weight[d:], None if bias is None else bias[d:]).reshape(b, m, 2, heads, -1)
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B', heads, M, hd)
    out = core(q, k, v, _mask(log_size, q))  # (B', h' * w', heads, hd)
    return attn.proj(out.reshape(b, hq, wq, d))


def merging_call(attn: nn.Module, x: Tensor) -> Tensor | None:
    """A merging attention's output for input ``x`` (B', h, w, C) as its ``tomeplug_setting`` asks, or None
    where the setting merges none of the h * w tokens (then upstream's forward runs, bit for bit).

    ``attn`` has :func:`merged_attention`'s parts and ``attention_core`` (an :data:`AttentionCore`).
    """
    setting = attn.tomeplug_setting
    b, h, w, c = x.shape  # B' = batch x windows
    if setting.num_to_merge(h * w) == 0:
        return None
    plan = plan_merge(setting, x.reshape(b, h * w, c), attn.qkv, attn.num_heads, (h, w))
    return merged_attention(attn, x, plan, setting.prop_attn, attn.attention_core)


class MergingMultiScaleAttention(nn.Module):
    """Mixin over Hiera's ``MultiScaleAttention``: merges each attention call per ``tomeplug_setting``."""

    tomeplug_setting: Setting

    def attention_core(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Upstream's softmax attention (:func:`sdpa`)."""
        return sdpa(q, k, v, mask)

    def forward(self, x: Tensor) -> Tensor:
        out = merging_call(self, x)
        return super().forward(x) if out is None else out

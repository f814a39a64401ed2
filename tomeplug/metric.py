"""What adapters share to plan a merge: the similarity metric, the padding mask, the plan call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.plan import MergePlan
from tomeplug.plan_validation import validate_plan
from tomeplug.setting import Setting


def head_mean(x: Tensor, num_heads: int) -> Tensor:
    """Average (B', N, C) features over ``num_heads`` head-sized channel chunks: (B', N, C / heads)."""
    if num_heads == 1:
        return x
    chunks = x.split(x.shape[-1] // num_heads, dim=-1)  # views; adding them beats a strided mean 2-3x on CPU
    total = chunks[0] + chunks[1]
    for chunk in chunks[2:]:
        total += chunk
    return total.div_(num_heads)


def key_features(tokens: Tensor, qkv: nn.Linear) -> Tensor:
    """The attention keys of ``tokens`` from a fused (q, k, v) projection: (B', N, C) -> (B', N, C_out)."""
    dim = qkv.out_features // 3
    bias = qkv.bias[dim : 2 * dim] if qkv.bias is not None else None
    return F.linear(tokens, qkv.weight[dim : 2 * dim], bias)


def padding_mask(tokens: Tensor) -> Tensor:
    """(B', N) bool, False for all-zero tokens: the zero padding SAM and Hiera add to edge windows."""
    return tokens.ne(0).any(dim=-1)


def plan_merge(
    setting: Setting,
    tokens: Tensor,
    qkv: nn.Linear | None,
    num_heads: int,
    grid: tuple[int, int],
    key_proj: nn.Module | None = None,
) -> MergePlan:
    """Plan one attention call's merge from its input tokens (B', N, C), as ``setting`` asks.

    The metric is the input (``setting.metric == "input"``) or the keys (``"keys"``: from the fused ``qkv``
    projection, or from ``key_proj`` where an attention projects q, k and v separately), averaged over heads;
    with ``setting.exclude_padding`` the strategy also gets the padding mask. The plan is validated
    (:func:`tomeplug.plan_validation.validate_plan`): a strategy's invalid plan raises before any output exists.
    """
    with torch.no_grad():
        if setting.metric == "input":
            features = tokens
        else:
            features = key_proj(tokens) if key_proj is not None else key_features(tokens, qkv)
        metric = head_mean(features, num_heads)  # (B', N, C / heads)
        valid = padding_mask(tokens) if setting.exclude_padding else None
        return validate_plan(setting.plan(metric, grid, valid), metric, setting.strategy)

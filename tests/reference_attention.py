"""Plain attention over one group of merged tokens, written from upstream's definitions: references for tests.

Each takes the merged tokens (M, C) of one attention call, their slots' kept tokens (M,) and sizes (M,),
the call's grid and whether proportional attention (``+log(size)`` on the keys' logits) is on, and returns
the attention's output (M, C) with its projection. No batching, no SDPA, no gathers: the logits are formed
in full and softmaxed.
"""

from __future__ import annotations

import math

import torch


def sam_attention(attn, x, kept, size, grid, prop_attn):
    """SAM's attention over one call's merged tokens x (M, C), each at its kept token's cell of ``grid``."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    m, c = x.shape
    q, k, v = attn.qkv(x).reshape(m, 3, attn.num_heads, -1).permute(1, 2, 0, 3)  # (heads, M, hd)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (heads, M, M)
    if attn.use_rel_pos:
        rows, cols = kept // grid[1], kept % grid[1]
        rel_h = get_rel_pos(grid[0], grid[0], attn.rel_pos_h)[rows][:, rows]  # (M, M, hd): query row, key row
        rel_w = get_rel_pos(grid[1], grid[1], attn.rel_pos_w)[cols][:, cols]
        logits = logits + torch.einsum("hmc,mnc->hmn", q, rel_h) + torch.einsum("hmc,mnc->hmn", q, rel_w)
    if prop_attn:
        logits = logits + size.log().to(x.dtype)
    out = logits.softmax(-1) @ v  # (heads, M, hd)
    return attn.proj(out.transpose(0, 1).reshape(m, c))


def hiera_attention(attn, x, kept, size, grid, prop_attn):
    """Hiera's attention (no positions, no query pooling) over one call's merged tokens x (M, C)."""
    m, _ = x.shape
    q, k, v = attn.qkv(x).reshape(m, 3, attn.num_heads, -1).permute(1, 2, 0, 3)  # (heads, M, hd)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if prop_attn:
        logits = logits + size.log().to(x.dtype)
    return attn.proj((logits.softmax(-1) @ v).transpose(0, 1).reshape(m, -1))

"""SAM 3 ViT attention over merged tokens: 2D axial RoPE at the kept tokens' positions, one SDPA call.

SAM 3's ViT (``sam3.model.vitdet``) rotates every query and key with the RoPE frequencies of its cell:
``freqs_cis`` is a fixed (N, hd / 2) complex table, one row per cell of the attention call (a window's
cells in windowed blocks, the whole grid's in global blocks), and consecutive channel pairs of q and k
are multiplied by it as complex numbers. A merged token is rotated with the row of its representative
(kept) token: the rows are gathered once per plan (:func:`kept_rotations`) and applied to the merged
queries and keys of every block that shares the plan (:func:`apply_rotations`). Both functions take
only tensors, so any SAM 3 implementation with a complex ``freqs_cis`` table can use them
(:func:`rope_at_kept` is the two in one call).

Blocks with decomposed relative positions (``use_rel_pos``; SAM 3 itself has none) add them as SAM's
ViT does, at the kept cells (:mod:`tomeplug_adapters.sam_vit_attention`), after the rotation as upstream.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.plan import MergePlan
from tomeplug_adapters.sam_vit_attention import MergedPositions, MergingSamAttention, plan_positions, position_bias


def kept_rotations(freqs_cis: Tensor, kept: Tensor) -> Tensor:
    """The RoPE rotations of merged tokens: ``freqs_cis`` (N, hd / 2) complex rows at ``kept`` (B', M)
    -> (B', 1, M, hd / 2) complex, broadcast over heads."""
    rows = torch.view_as_real(freqs_cis.to(kept.device))[kept]  # (B', M, hd / 2, 2): as reals (compiles, any device)
    return torch.view_as_complex(rows).unsqueeze(1)


def apply_rotations(q: Tensor, k: Tensor, rotations: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate queries and keys (B', heads, M, hd) by ``rotations`` (B', 1, M, hd / 2) complex, pairing
    consecutive channels and computing in float32 as sam3's ``apply_rotary_enc`` does; dtypes kept."""

    def rotate(x: Tensor) -> Tensor:
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B', heads, M, hd / 2)
        return torch.view_as_real(pairs * rotations).flatten(3).type_as(x)

    return rotate(q), rotate(k)


def rope_at_kept(q: Tensor, k: Tensor, freqs_cis: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
    """Merged queries and keys (B', heads, M, hd) rotated at their kept tokens' cells (``kept``: (B', M))."""
    return apply_rotations(q, k, kept_rotations(freqs_cis, kept))


class MergedRope(NamedTuple):
    """The positional terms of one plan's merged tokens, shared by every block that runs on them.

    Attributes:
        rotations: (B', 1, M, hd / 2) complex RoPE rotations at the kept cells, or None (no RoPE).
        positions: the kept cells for relative positions and the proportional-attention bias.
    """

    rotations: Tensor | None
    positions: MergedPositions


def merged_rope(
    attn: nn.Module, plan: MergePlan, grid: tuple[int, int], prop_attn: bool, dtype: torch.dtype
) -> MergedRope:
    """The positional terms of a plan's merged tokens for sam3 ``Attention`` ``attn`` over an (h, w) call."""
    if attn.use_rope and attn.freqs_cis.shape[0] != grid[0] * grid[1]:
        raise ValueError(
            f"sam3 Attention's freqs_cis has {attn.freqs_cis.shape[0]} rows for a {grid[0]}x{grid[1]} attention "
            "call; feed the ViT images of the size it was built for (img_size)"
        )
    rotations = kept_rotations(attn.freqs_cis, plan.kept) if attn.use_rope else None
    return MergedRope(rotations, plan_positions(plan, grid, prop_attn, dtype))


def attend(attn: nn.Module, merged: Tensor, context: MergedRope) -> Tensor:
    """sam3's ``Attention`` over merged tokens (B', M, C) -> (B', M, C), its output projection included."""
    b, m, c = merged.shape
    q, k, v = attn.qkv(merged).reshape(b, m, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if context.rotations is not None:
        q, k = apply_rotations(q, k, context.rotations)  # (B', heads, M, hd)
    rel_pos = (attn.rel_pos_h, attn.rel_pos_w) if attn.use_rel_pos else None
    bias = position_bias(q, context.positions, rel_pos)  # (B', heads | 1, M, M) or None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B', heads, M, hd)
    return attn.proj(out.transpose(1, 2).reshape(b, m, c))  # per-token linear: exact before an unmerge


def merged_attention(
    attn: nn.Module, tokens: Tensor, plan: MergePlan, grid: tuple[int, int], prop_attn: bool
) -> Tensor:
    """sam3's attention over merged tokens: (B', N, C) -> (B', N, C), projection before the unmerge."""
    context = merged_rope(attn, plan, grid, prop_attn, tokens.dtype)
    return plan.unmerge(attend(attn, plan.merge(tokens), context))


class MergingSam3Attention(MergingSamAttention):
    """Mixin over sam3's ViT ``Attention`` (scope ``attn``): merges each attention call's tokens.

    The call's input is (B', h, w, C): a batch of windows, or the whole grid of a global block.
    """

    merged_attention = staticmethod(merged_attention)

"""SAM ViT attention over merged tokens: relative positions at the kept cells, one SDPA call, projection.

Every scope of :mod:`tomeplug_adapters.sam_vit` attends through :func:`attend`. What depends only on
the plan (the relative-position indices, the key one-hots, ``log(size)``) is built once per plan by
:func:`merged_positions`, so a span of blocks sharing a plan builds it once.

SAM's decomposed relative positions add ``q_m . R_h[row_m - row_n] + q_m . R_w[col_m - col_n]`` to the
logit of query m and key n. For merged tokens the rows and columns are those of the kept tokens, so the
(M x M) bias cannot be broadcast as upstream does. It is built as: the query-side terms
``T[m, r] = q_m . R_h[row_m - r]`` for every grid row r (and likewise columns) by one small gather per
call, then ``bias[m, n] = T[m, row_n] + T[m, h + col_n]``: two gathers whose index depends on the key
alone (a broadcast view, never an (M x M) integer tensor), plus ``log(size)`` of the key. A one-hot matmul
computes the same bias about twice as fast on CPU, but fvcore rightly counts it as heads x M x M x (h + w)
multiply-adds (8.6 G per ViT-L global call); the gathers keep the FLOPs honest.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan, log_size_bias
from tomeplug.setting import Setting


def resized_rel_pos(rel_pos: Tensor, size: int) -> Tensor:
    """The (2 * size - 1, C) relative-position table for a size-long axis, interpolated as SAM does."""
    length = 2 * size - 1
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return resized.reshape(-1, length).permute(1, 0)


class MergedPositions(NamedTuple):
    """The positional terms of one plan's merged tokens, shared by every attention call over them.

    Attributes:
        grid: (h, w) of the attention call.
        query_index: (B', M, h + w) int64, for every merged query the entries of the stacked
            ``[R_h; R_w]`` logits it needs: its offset to each grid row, then to each grid column.
        key_rows, key_cols: (B', 1, 1, M) int64, every merged key's row, and ``h`` + its column.
        log_size: (B', 1, 1, M) the proportional-attention bias, or None.
    """

    grid: tuple[int, int]
    query_index: Tensor
    key_rows: Tensor
    key_cols: Tensor
    log_size: Tensor | None


def merged_positions(kept: Tensor, size: Tensor | None, grid: tuple[int, int], dtype: torch.dtype) -> MergedPositions:
    """Positions of merged tokens with representatives ``kept`` (B', M); ``size`` given: proportional attention."""
    h, w = grid
    row, col = (kept // w).unsqueeze(-1), (kept % w).unsqueeze(-1)  # (B', M, 1)
    rows, cols = torch.arange(h, device=kept.device), torch.arange(w, device=kept.device)
    query_index = torch.cat([row - rows + (h - 1), col - cols + (2 * h - 1) + (w - 1)], dim=-1)  # (B', M, h + w)
    key_rows, key_cols = row.transpose(1, 2).unsqueeze(1), (col + h).transpose(1, 2).unsqueeze(1)  # (B', 1, 1, M)
    log_size = None if size is None else log_size_bias(size, dtype)  # (B', 1, 1, M)
    return MergedPositions(grid, query_index, key_rows, key_cols, log_size)


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def gather_bits(t: Tensor, index: Tensor) -> Tensor:
    """``t.gather(-1, index)`` that moves the values' bits as integers where no gradient is needed: exact,
    and on CPU 3x faster for bf16 / fp16 (whose gather kernel is slow) and a little faster for fp32 on small
    windows. A plain gather where autograd records ``t`` (an integer view would cut it out of the graph)
    and under the JIT tracer (fvcore's FLOPs count), which cannot trace ``view(dtype)``."""
    if (torch.is_grad_enabled() and t.requires_grad) or torch.jit.is_tracing():
        return t.gather(-1, index)
    return t.view(_SAME_SIZE_INT[t.element_size()]).gather(-1, index).view(t.dtype)


def position_bias(q: Tensor, positions: MergedPositions, rel_pos: tuple[Tensor, Tensor] | None) -> Tensor | None:
    """The additive attention bias of merged queries ``q`` (B', heads, M, hd): (B', heads, M, M) or None.

    ``rel_pos`` is the attention's ``(rel_pos_h, rel_pos_w)``, or None where it has no relative positions.
    """
    if rel_pos is None:
        return None if positions.log_size is None else positions.log_size.to(q.dtype)
    (h, w), (b, heads, m, _) = positions.grid, q.shape
    table = torch.cat([resized_rel_pos(rel_pos[0], h), resized_rel_pos(rel_pos[1], w)]).to(q.dtype)
    index = positions.query_index.unsqueeze(1).expand(-1, heads, -1, -1)
    terms = gather_bits(q @ table.T, index)  # (B', heads, M, h + w) from (B', heads, M, 2h + 2w - 2), then freed
    rows = positions.key_rows.expand(b, heads, m, m)
    if torch.compiler.is_compiling():  # one fused kernel, no intermediate; inductor would nest the loop's head slices
        bias = gather_bits(terms, rows) + gather_bits(terms, positions.key_cols.expand(b, heads, m, m))
        return bias if positions.log_size is None else bias + positions.log_size.to(q.dtype)
    bias = gather_bits(terms, rows)  # (B', heads, M, M): T[m, row_n]
    cols = positions.key_cols.expand(b, 1, m, m)
    for head in range(heads):  # + T[m, h + col_n], a head at a time: never a second (B', heads, M, M) tensor
        bias[:, head : head + 1].add_(gather_bits(terms[:, head : head + 1], cols))
    return bias if positions.log_size is None else bias.add_(positions.log_size.to(q.dtype))


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
    return position_bias(q, merged_positions(kept, None, grid, q.dtype), (rel_pos_h, rel_pos_w))


def attend(attn: nn.Module, merged: Tensor, positions: MergedPositions) -> Tensor:
    """SAM's attention module over merged tokens (B', M, C) -> (B', M, C), its output projection included."""
    b, m, c = merged.shape
    q, k, v = attn.qkv(merged).reshape(b, m, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)  # (B', heads, M, hd)
    bias = position_bias(q, positions, (attn.rel_pos_h, attn.rel_pos_w) if attn.use_rel_pos else None)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)  # (B', heads, M, hd)
    return attn.proj(out.transpose(1, 2).reshape(b, m, c))  # per-token linear: exact before an unmerge


def plan_positions(plan: MergePlan, grid: tuple[int, int], prop_attn: bool, dtype: torch.dtype) -> MergedPositions:
    """:func:`merged_positions` of a plan's merged tokens."""
    return merged_positions(plan.kept, plan.size if prop_attn else None, grid, dtype)


def merged_attention(
    attn: nn.Module, tokens: Tensor, plan: MergePlan, grid: tuple[int, int], prop_attn: bool
) -> Tensor:
    """SAM's attention over merged tokens: (B', N, C) -> (B', N, C), projection before the unmerge."""
    positions = plan_positions(plan, grid, prop_attn, tokens.dtype)
    return plan.unmerge(attend(attn, plan.merge(tokens), positions))


class MergingSamAttention(nn.Module):
    """Mixin over SAM's ``Attention`` (scope ``attn``): merges each attention call's tokens.

    Subclasses for other windowed SAM-style attentions replace ``merged_attention`` only.
    """

    tomeplug_setting: Setting
    merged_attention = staticmethod(merged_attention)

    def forward(self, x: Tensor) -> Tensor:
        setting = self.tomeplug_setting
        b, h, w, c = x.shape  # B' = batch x windows
        n = h * w
        if setting.num_to_merge(n) == 0:
            return super().forward(x)
        tokens = x.reshape(b, n, c)
        plan = plan_merge(setting, tokens, self.qkv, self.num_heads, (h, w))
        return self.merged_attention(self, tokens, plan, (h, w), setting.prop_attn).reshape(b, h, w, -1)

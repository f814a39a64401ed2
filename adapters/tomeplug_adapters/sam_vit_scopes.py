"""SAM ViT merge scopes beyond attention: ``block`` (attention and MLP) and ``span`` (runs of blocks).

The semantics are described in :mod:`tomeplug_adapters.sam_vit`. Here: :func:`run_merged` runs one or
more consecutive blocks on one plan's merged tokens, :class:`MergingSamBlock` is the block mixin (scope
``block``, and ``span`` outside a run), :class:`MergingSamEncoder` walks the blocks and hands every run
of span-scoped windowed blocks to :func:`run_merged` at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.config import StrategyConfig
from tomeplug.metric import plan_merge
from tomeplug_adapters.sam_vit_attention import attend, plan_positions


def partition(x: Tensor, size: int) -> Tensor:
    """(B, H, W, C) -> (B', N, C): windows of size x size (B' = B x windows) zero-padded at the bottom and
    right edges as SAM pads them, or the whole grid (B' = B) where ``size`` is 0."""
    b, h, w, c = x.shape
    if size == 0:
        return x.reshape(b, h * w, c)
    pad_h, pad_w = -h % size, -w % size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    nh, nw = (h + pad_h) // size, (w + pad_w) // size
    return x.reshape(b, nh, size, nw, size, c).transpose(2, 3).reshape(b * nh * nw, size * size, c)


def unpartition(tokens: Tensor, size: int, hw: tuple[int, int]) -> Tensor:
    """The inverse of :func:`partition`: (B', N, C) -> (B, H, W, C), padding cropped."""
    (h, w), c = hw, tokens.shape[-1]
    if size == 0:
        return tokens.reshape(-1, h, w, c)
    nh, nw = -(-h // size), -(-w // size)
    x = tokens.reshape(-1, nh, nw, size, size, c).transpose(2, 3).reshape(-1, nh * size, nw * size, c)
    return x[:, :h, :w].contiguous() if nh * size > h or nw * size > w else x


def tokens_per_call(block: nn.Module, x: Tensor) -> int:
    """N, the tokens of each of ``block``'s attention calls on input ``x`` (B, H, W, C)."""
    return block.window_size**2 if block.window_size else x.shape[1] * x.shape[2]


def run_merged(blocks: Sequence[nn.Module], x: Tensor) -> Tensor:
    """Run consecutive blocks (one window partition) on one merge plan's tokens: (B, H, W, C) -> (B, H, W, C).

    The plan is made from the first block's ``norm1`` of the windows (padding zeroed, as upstream pads it)
    and its config. Each token leaves with its own residual plus its slot's change ("delta unmerge").
    """
    first, (b, h, w, _) = blocks[0], x.shape
    config, size = first.tomeplug_config, first.window_size
    grid = (size, size) if size else (h, w)
    tokens = partition(x, size)  # (B', N, C) the residual stream
    real = None
    if size and (h % size or w % size):
        real = partition(x.new_ones(b, h, w, 1), size)  # (B', N, 1): 0 for padding
    normed = first.norm1(tokens) if real is None else first.norm1(tokens) * real
    plan = plan_merge(config, normed, first.attn.qkv, first.attn.num_heads, grid)
    merged = plan.merge(tokens)  # (B', M, C) size-weighted mean residuals
    real_slots = None if real is None else plan.merge(real).gt(0).to(x.dtype)  # (B', M, 1): 0 if all padding
    positions = plan_positions(plan, grid, config.prop_attn, x.dtype)  # once per plan
    out = merged
    for block in blocks:
        attn_in = block.norm1(out) if real_slots is None else block.norm1(out) * real_slots
        out = out + attend(block.attn, attn_in, positions)
        out = out + block.mlp(block.norm2(out))  # on merged tokens, all-padding slots included
    return unpartition(tokens + plan.unmerge(out - merged), size, (h, w))


class MergingSamBlock(nn.Module):
    """Mixin over SAM's ``Block`` (scopes ``block`` and ``span``): attention and MLP on merged tokens."""

    tomeplug_config: StrategyConfig

    def merges(self, x: Tensor) -> bool:
        """Whether this block merges any token of input ``x`` (B, H, W, C)."""
        return self.tomeplug_config.num_to_merge(tokens_per_call(self, x)) > 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.merges(x):
            return super().forward(x)  # r = 0: upstream, bit for bit
        return run_merged([self], x)


def span_runs(blocks: Sequence[nn.Module], schedule: Mapping[int, StrategyConfig]) -> tuple[tuple[int, ...], ...]:
    """The encoder's blocks in runs: maximal runs of consecutive span-scoped windowed blocks with equal
    configs and window sizes, and every other block alone."""
    runs: list[list[int]] = []
    extendable = False
    for index, block in enumerate(blocks):
        config = schedule.get(index)
        spans = config is not None and config.scope == "span" and block.window_size > 0
        last = blocks[runs[-1][-1]] if runs else None
        if spans and extendable and last.window_size == block.window_size and schedule[runs[-1][-1]] == config:
            runs[-1].append(index)
        else:
            runs.append([index])
        extendable = spans
    return tuple(tuple(run) for run in runs)


class MergingSamEncoder(nn.Module):
    """Mixin over SAM's ``ImageEncoderViT`` (scope ``span``): runs each span of blocks on one plan."""

    tomeplug_runs: tuple[tuple[int, ...], ...]
    returns_interm: ClassVar[bool] = False
    """Also return every global block's output (HQ-SAM's encoder does)."""

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        x = self.patch_embed(x)  # (B, H, W, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        interm = []
        for run in self.tomeplug_runs:
            blocks = [self.blocks[i] for i in run]
            if len(blocks) > 1 and blocks[0].merges(x):
                x = run_merged(blocks, x)
            else:
                for block in blocks:
                    x = block(x)
            if blocks[-1].window_size == 0:
                interm.append(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        return (x, interm) if self.returns_interm else x


class MergingHQSamEncoder(MergingSamEncoder):
    """Mixin over HQ-SAM's ``ImageEncoderViT``: also returns the global blocks' outputs, as upstream."""

    returns_interm = True

"""Merge scopes ``block`` and ``span`` for windowed-attention encoders (SAM ViT, SAM 2 Hiera).

Both encoders' blocks map (B, H, W, C) to (B, H, W, C): ``norm1``, attention on zero-padded windows (or
the whole map), a residual add, then ``norm2``, MLP and a residual add on the map. Here such blocks run
on merged tokens:

- ``block``: one block runs attention and MLP on merged tokens. The residual tokens x are windowed
  (zero-padded) as upstream windows norm1(x); the plan comes from norm1 of the windows (padding zeroed);
  m = merge(x) (size-weighted mean residuals); u = m + attn(norm1(m)); v = u + mlp(norm2(u)); every
  token leaves with its own residual plus its slot's change, x + unmerge(v - m) ("delta unmerge"). At
  r = 0 the block is upstream's. Upstream runs the MLP on the unpadded map; here it runs on the merged
  window tokens, slots holding only padding included (their attention input stays zero, as upstream's
  padding, and their outputs are cropped).
- ``span``: tokens stay merged across a run of consecutive span-scoped windowed blocks with one window
  size and equal settings (:func:`span_runs`): the plan is made at the run's first block and reused, each
  block runs as in ``block`` scope, and the delta unmerge against the run's input happens once, at its
  end. The encoder's loop walks the runs (:func:`run_blocks`).

An architecture subclasses :class:`MergingWindowedBlock` with its attention over merged tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.classswap import swap_class
from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan
from tomeplug.setting import Setting


def partition(x: Tensor, size: int) -> Tensor:
    """(B, H, W, C) -> (B', N, C): windows of size x size (B' = B x windows) zero-padded at the bottom and
    right edges as SAM and SAM 2 pad them, or the whole map (B' = B) where ``size`` is 0."""
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


class MergingWindowedBlock(nn.Module):
    """Mixin over a windowed block (scopes ``block`` and ``span``): attention and MLP on merged tokens.

    The block has ``window_size`` (0: global), ``norm1``, ``attn`` (with ``qkv`` and ``num_heads``),
    ``norm2`` and ``mlp``. A subclass supplies the attention over merged tokens; a package that names
    these parts differently overrides :meth:`attention_norm`, :meth:`plan` and :meth:`merged_mlp`.
    """

    tomeplug_setting: Setting

    def attention_norm(self, tokens: Tensor) -> Tensor:
        """The normalisation before attention (B', N, C) -> (B', N, C): ``norm1``."""
        return self.norm1(tokens)

    def plan(self, normed: Tensor, grid: tuple[int, int]) -> MergePlan:
        """This block's merge plan for attention inputs ``normed`` (B', N, C) of (h, w) attention calls."""
        return plan_merge(self.tomeplug_setting, normed, self.attn.qkv, self.attn.num_heads, grid)

    def merged_context(self, plan: MergePlan, grid: tuple[int, int], dtype: torch.dtype) -> Any:
        """What :meth:`merged_attend` needs of a plan (e.g. positions), built once per plan."""
        raise NotImplementedError

    def merged_attend(self, tokens: Tensor, context: Any) -> Tensor:
        """The block's attention over merged tokens (B', M, C) -> (B', M, C), projection included."""
        raise NotImplementedError

    def residual(self, delta: Tensor) -> Tensor:
        """A branch's output before it is added to the residual stream (e.g. stochastic depth)."""
        return delta

    def merged_mlp(self, tokens: Tensor) -> Tensor:
        """The block's MLP branch on merged tokens (B', M, C) -> (B', M, C): ``mlp(norm2(tokens))``."""
        return self.mlp(self.norm2(tokens))

    def merges(self, x: Tensor) -> bool:
        """Whether this block merges any token of input ``x`` (B, H, W, C)."""
        n = self.window_size**2 if self.window_size else x.shape[1] * x.shape[2]
        return self.tomeplug_setting.num_to_merge(n) > 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.merges(x):
            return super().forward(x)  # r = 0: upstream, bit for bit
        return run_merged([self], x)


def run_merged(blocks: Sequence[MergingWindowedBlock], x: Tensor) -> Tensor:
    """Run consecutive blocks (one window size) on one plan's merged tokens: (B, H, W, C) -> (B, H, W, C).

    The plan is made by the first block (:meth:`MergingWindowedBlock.plan`) from its attention norm of the
    windows (padding zeroed, as upstream pads it). Each token leaves with its own residual plus its slot's
    change ("delta unmerge").
    """
    first, (b, h, w, _) = blocks[0], x.shape
    size = first.window_size
    grid = (size, size) if size else (h, w)
    tokens = partition(x, size)  # (B', N, C) the residual stream
    real = None
    if size and (h % size or w % size):
        real = partition(x.new_ones(b, h, w, 1), size)  # (B', N, 1): 0 for padding
    normed = first.attention_norm(tokens) if real is None else first.attention_norm(tokens) * real
    plan = first.plan(normed, grid)
    del normed  # only the plan needs it: not held through the run
    merged = plan.merge(tokens)  # (B', M, C) size-weighted mean residuals
    real_slots = None if real is None else plan.merge(real).gt(0).to(x.dtype)  # (B', M, 1): 0 if all padding
    context = first.merged_context(plan, grid, x.dtype)  # once per plan
    out = merged
    for block in blocks:
        attn_in = block.attention_norm(out) if real_slots is None else block.attention_norm(out) * real_slots
        out = out + block.residual(block.merged_attend(attn_in, context))
        out = out + block.residual(block.merged_mlp(out))  # on merged tokens, all-padding slots included
    return unpartition(plan.unmerge(out - merged).add_(tokens), size, (h, w))  # in place: one (B', N, C) less


def span_runs(
    blocks: Sequence[nn.Module],
    schedule: Mapping[int, Setting],
    spans: Callable[[nn.Module], bool] = lambda block: True,
    stops: frozenset[int] = frozenset(),
) -> tuple[tuple[int, ...], ...]:
    """The encoder's blocks in runs: maximal runs of consecutive span-scoped windowed blocks with equal
    settings and window sizes, and every other block alone. Computed from the schedule alone.

    ``spans(block)`` says whether a block can join a run (is patched as a :class:`MergingWindowedBlock`
    when span-scoped); a run ends at a block in ``stops`` (one whose output the encoder returns, e.g. a
    stage's last).
    """
    runs: list[list[int]] = []
    extendable = False
    for index, block in enumerate(blocks):
        setting = schedule.get(index)
        spanning = setting is not None and setting.scope == "span" and block.window_size > 0 and spans(block)
        joins = extendable and blocks[index - 1].window_size == block.window_size and schedule[index - 1] == setting
        if spanning and joins:
            runs[-1].append(index)
        else:
            runs.append([index])
        extendable = spanning and index not in stops
    return tuple(tuple(run) for run in runs)


def patch_encoder_loop(
    encoder: nn.Module,
    mixin: type,
    schedule: Mapping[int, Setting],
    spans: Callable[[nn.Module], bool] = lambda block: True,
    stops: frozenset[int] = frozenset(),
) -> None:
    """With any span-scoped block in ``schedule``, swap ``encoder``'s class for ``mixin`` (its loop walks
    the runs of :func:`span_runs`, attached as ``tomeplug_runs``). Idempotent: adapters call it per block."""
    if any(setting.scope == "span" for setting in schedule.values()):
        swap_class(encoder, mixin)
        encoder.tomeplug_runs = span_runs(encoder.blocks, schedule, spans, stops)


def run_blocks(blocks: Sequence[nn.Module], runs: Sequence[Sequence[int]], x: Tensor) -> Iterator[tuple[int, Tensor]]:
    """Run the encoder's blocks run by run (a run of several on one plan); yields (last block, output)."""
    for run in runs:
        members = [blocks[i] for i in run]
        if len(members) > 1 and members[0].merges(x):
            x = run_merged(members, x)
        else:
            for block in members:
                x = block(x)
        yield run[-1], x

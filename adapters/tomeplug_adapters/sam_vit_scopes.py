"""SAM ViT merge scopes beyond attention: ``block`` (attention and MLP) and ``span`` (runs of blocks).

The machinery is :mod:`tomeplug_adapters.windowed_scopes`; here are SAM's pieces:
:class:`MergingSamBlock` attends with the merged tokens' relative positions, built once per plan, and
:class:`MergingSamEncoder` walks the runs of blocks (all of SAM's windowed blocks share one window
partition, so a run ends only before a global block, a block of another scope or setting, or the neck).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from tomeplug.plan import MergePlan
from tomeplug_adapters.sam_vit_attention import MergedPositions, attend, plan_positions
from tomeplug_adapters.windowed_scopes import MergingWindowedBlock, run_blocks


class MergingSamBlock(MergingWindowedBlock):
    """Mixin over SAM's ``Block`` (scopes ``block`` and ``span``): attention and MLP on merged tokens."""

    def merged_context(self, plan: MergePlan, grid: tuple[int, int], dtype: torch.dtype) -> MergedPositions:
        """The merged tokens' relative positions (and ``log(size)`` with proportional attention)."""
        return plan_positions(plan, grid, self.tomeplug_setting.prop_attn, dtype)

    def merged_attend(self, tokens: Tensor, context: MergedPositions) -> Tensor:
        """SAM's attention over merged tokens at their kept tokens' positions."""
        return attend(self.attn, tokens, context)


class MergingSamEncoder(nn.Module):
    """Mixin over SAM's ``ImageEncoderViT`` (scope ``span``): runs each span of blocks on one plan."""

    tomeplug_runs: tuple[tuple[int, ...], ...]
    returns_interm: ClassVar[bool] = False
    """Also return every global block's output (HQ-SAM's encoder does)."""

    def run_encoder(self, pixels: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Patch embedding, positions and the blocks run by run: the (B, H, W, C) map before the neck, and
        every global block's output (unmerged, dense layout)."""
        x = self.add_abs_pos(self.patch_embed(pixels))  # (B, H, W, C)
        runs, interm = run_blocks(self.blocks, self.tomeplug_runs, x), []
        del x  # the runs hold it as long as they need it, no longer
        for last, out in runs:
            if self.returns_interm and self.blocks[last].window_size == 0:
                interm.append(out)  # kept only where the encoder returns them
        return out, interm

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        out, interm = self.run_encoder(x)
        x = self.neck(out.permute(0, 3, 1, 2))
        return (x, interm) if self.returns_interm else x

    def add_abs_pos(self, x: Tensor) -> Tensor:
        """The patch embeddings (B, H, W, C) plus the absolute positions, as upstream adds them."""
        return x if self.pos_embed is None else x + self.pos_embed


class MergingHQSamEncoder(MergingSamEncoder):
    """Mixin over HQ-SAM's ``ImageEncoderViT``: also returns the global blocks' outputs, as upstream."""

    returns_interm = True

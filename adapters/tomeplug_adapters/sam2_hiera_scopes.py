"""SAM 2 Hiera merge scopes beyond attention: ``block`` (attention and MLP) and ``span`` (runs of blocks).

The machinery is :mod:`tomeplug_adapters.windowed_scopes`; here are Hiera's pieces:
:class:`MergingHieraBlock` attends without positions (``log(size)`` with proportional attention) and
keeps upstream's stochastic depth, and :class:`MergingHiera` walks the runs of blocks and returns every
stage's output as upstream does. Stage transitions (q-pooling, channel change) keep their shape-changing
residual and merge only in attention (:func:`keeps_shape` is False for them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tomeplug.plan import MergePlan
from tomeplug_adapters.sam2_hiera_attention import attend, proportional_bias
from tomeplug_adapters.windowed_scopes import MergingWindowedBlock, run_blocks


def keeps_shape(block: nn.Module) -> bool:
    """Whether a ``MultiScaleBlock`` maps its input to the same grid and channels (no stage transition)."""
    return block.q_stride is None and block.dim == block.dim_out


class MergingHieraBlock(MergingWindowedBlock):
    """Mixin over Hiera's ``MultiScaleBlock`` (scopes ``block`` and ``span``): attention and MLP on merged tokens."""

    def merged_context(self, plan: MergePlan, grid: tuple[int, int], dtype: torch.dtype) -> Tensor | None:
        """The proportional-attention bias (B', 1, 1, M), or None (``attend`` casts it to the queries' dtype)."""
        return proportional_bias(plan, self.tomeplug_setting.prop_attn)

    def merged_attend(self, tokens: Tensor, context: Tensor | None) -> Tensor:
        """Hiera's attention over merged tokens."""
        return attend(self.attn, tokens, context)

    def residual(self, delta: Tensor) -> Tensor:
        """Upstream's stochastic depth (the identity in eval mode)."""
        return self.drop_path(delta)


class MergingHiera(nn.Module):
    """Mixin over sam2's ``Hiera`` trunk (scope ``span``): runs each span of blocks on one plan."""

    tomeplug_runs: tuple[tuple[int, ...], ...]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)  # (B, H, W, C)
        x = x + self._get_pos_embed(x.shape[1:3])
        outputs = []
        for last, out in run_blocks(self.blocks, self.tomeplug_runs, x):
            if last == self.stage_ends[-1] or (last in self.stage_ends and self.return_interm_layers):
                outputs.append(out.permute(0, 3, 1, 2))  # (B, C, H, W) as upstream
        return outputs

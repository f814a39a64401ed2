"""SAM 2 memory attention: the memory frames' spatial tokens merged as the cross-attention's keys and values.

The option ``memory_r`` of the ``memory_attention`` target (see :mod:`tomeplug_adapters.sam2_memory_attention`).
SAM 2 hands its memory attention the memory (B, F x N + P, C_mem): the spatial tokens of F memory frames,
each an N-cell grid like the current frame's, then P object-pointer tokens; the positional encoding has the
same layout. Here each memory frame gets its own plan (the layer's strategy at r = ``memory_r``; the metric
as the setting says, from the frame's memory features, i.e. the cross-attention's values before their
projection: ``"keys"`` projects them with the first merging layer's ``k_proj``); the memory and its positional
encoding are merged by it (size-weighted means, so the key input merge(memory) + merge(pos) is the merge of
upstream's); the pointers are appended unmerged.

Planned once per memory frame: a frame's memory features never change while it stays in the bank, but its
positional encoding does (the temporal encoding ``maskmem_tpos_enc`` changes as the frame ages), so the plan
leaves the positional encoding out: tokens merge by what they encode (the spatial encoding is the same for every
frame; RoPE still rotates each merged key at its kept cell), and ``MemoryAttention`` keeps the
plans of recent calls' frames (:class:`tomeplug.plan_cache.GroupPlanCache`, matched by exact content): each call
plans only the frame that entered the bank, once for all layers.

Every key carries ``log(size)`` (proportional attention: a key that holds k memory cells keeps their mass;
the pointers have size 1), and a merged key is rotated (RoPE) with the row of its kept token's cell, where
upstream rotates every spatial key with its own cell's row (``rope_k_repeat``); the pointers keep none
(``num_k_exclude_rope``). A plan that merges nothing (``memory_r`` = 0, or too few tokens) leaves the memory
as upstream's. A memory whose spatial part is not whole frames (the single "no memory" token some configs
use on conditioning frames) is not merged.
"""

from __future__ import annotations

from typing import NamedTuple

import attrs
import torch
from torch import Tensor, nn

from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan, log_size_bias
from tomeplug.plan_cache import GroupPlanCache
from tomeplug.setting import Setting
from tomeplug_adapters.sam3_vit_attention import kept_rotations


class MergedMemory(NamedTuple):
    """The memory as a cross-attention sees it after merging each memory frame's spatial tokens.

    Attributes:
        memory: (B, F * M + P, C_mem): each frame's M merged spatial tokens, frame after frame, then the P pointers.
        pos: its positional encoding, merged alike (None where the memory came without one).
        cells: (B, F * M) int64, the grid cell in [0, N) of each merged token's kept token (its RoPE row).
        log_size: (B, 1, 1, F * M + P) float32, ``log(size)`` of every key (0 for the pointers).
    """

    memory: Tensor
    pos: Tensor | None
    cells: Tensor
    log_size: Tensor

    def key_rotations(self, table: Tensor) -> Tensor:
        """The merged spatial keys' RoPE rows: ``table`` (N, hd / 2) at their kept cells -> (B, 1, F * M, hd / 2)."""
        return kept_rotations(table, self.cells)


def memory_setting(setting: Setting) -> Setting | None:
    """The setting that plans the memory frames: the layer's strategy at r = ``memory_r``; None when unset."""
    if setting.memory_r is None:
        return None
    return attrs.evolve(setting, strategy=attrs.evolve(setting.strategy, r=setting.memory_r), memory_r=None)


def merge_memory(
    layer: nn.Module,
    memory: Tensor,
    pos: Tensor | None,
    num_pointers: int,
    grid: tuple[int, int],
    plans: GroupPlanCache | None = None,
) -> MergedMemory | None:
    """Merge the memory (B, F * N + P, C_mem) of a merging ``MemoryAttentionLayer`` as its
    ``tomeplug_memory_setting`` (:func:`memory_setting`, attached when patched) says, one plan per memory frame
    of N = h * w cells; None when nothing merges (the memory is then used as upstream's). ``plans``: the
    frames' plans of earlier calls, reused for the frames still in the bank (None: plan every frame)."""
    setting = layer.tomeplug_memory_setting
    n = grid[0] * grid[1]
    b, total, _ = memory.shape
    spatial = total - num_pointers
    frames = spatial // n
    if setting is None or frames == 0 or frames * n != spatial or setting.num_to_merge(n) == 0:
        return None

    def per_frame(x: Tensor) -> Tensor:  # (B, F * N + P, C) -> (B * F, N, C): one token group per memory frame
        return x[:, :spatial].reshape(b * frames, n, x.shape[-1])

    attn = layer.cross_attn_image
    inputs = per_frame(memory)  # the features: unlike the positional encoding, fixed while a frame is in the bank

    def planner(groups: Tensor) -> MergePlan:
        return plan_merge(setting, groups, None, attn.num_heads, grid, attn.k_proj)

    if plans is None:
        plan = planner(inputs)
    else:  # the metric "keys" projects with k_proj: new weights invalidate the plans
        keys = setting.metric == "keys"
        weights = tuple((p.data_ptr(), p._version) for p in attn.k_proj.parameters()) if keys else ()
        plan = plans.plan(inputs, planner, version=weights)

    def merged(x: Tensor) -> Tensor:  # (B, F * N + P, C) -> (B, F * M + P, C), the pointers as they were
        return torch.cat([plan.merge(per_frame(x)).reshape(b, -1, x.shape[-1]), x[:, spatial:]], dim=1)

    sizes = torch.cat([plan.size.reshape(b, -1), plan.size.new_ones(b, num_pointers)], dim=1)  # (B, F * M + P)
    merged_pos = None if pos is None else merged(pos)
    return MergedMemory(merged(memory), merged_pos, plan.kept.reshape(b, -1), log_size_bias(sizes, sizes.dtype))


def check_memory_settings(schedule: dict[int, Setting], adapter_name: str) -> int | None:
    """The first layer of ``schedule`` that merges memory (None: none does); raises unless every such layer
    plans the memory alike (one plan per call serves them all)."""
    planners = {index: memory_setting(setting) for index, setting in schedule.items()}
    planners = {index: setting for index, setting in planners.items() if setting is not None}
    if not planners:
        return None
    first, *rest = planners
    for index in rest:
        one, other = planners[first], planners[index]
        if (one.strategy, one.metric, one.exclude_padding) != (other.strategy, other.metric, other.exclude_padding):
            raise ValueError(
                f"{adapter_name}: layers {first} and {index} plan the memory differently (strategy, its parameters "
                "with r = memory_r, metric); each memory frame is planned once for every layer: give the layers "
                "that set memory_r the same strategy, parameters and metric"
            )
    return first

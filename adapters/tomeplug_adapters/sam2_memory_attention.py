"""SAM 2 (sam2) memory attention: the current frame's tokens merged inside ``MemoryAttention``'s layers.

Target ``"memory_attention"``: the blocks are ``MemoryAttention.layers`` (4 in every official SAM 2 / 2.1
model). Each ``MemoryAttentionLayer`` maps the frame's tokens (B, N, C) (N = H x W, the 64 x 64 grid at
1024 px; B = the objects tracked together) through self-attention (RoPE on queries and keys), cross-
attention to the memory (the memory frames' spatial tokens, RoPE on their keys, then the object-pointer
tokens, which upstream keeps out of RoPE via ``num_k_exclude_rope``) and an MLP, each a pre-norm residual
branch. Here the queries (the frame's tokens) run merged as the scope says; with the option ``memory_r``
the memory frames' spatial tokens merge too, planned once per memory frame for every layer that sets it
(:mod:`tomeplug_adapters.sam2_memory_keys`; ``r=0, memory_r=0.5`` merges the memory only):

- ``attn``: per layer, one plan (as in ``block``, below); self-attention and cross-attention each run on
  their merged inputs (q, k, v of the self-attention, the cross-attention's queries) and are unmerged
  after their output projections; the residual adds and the MLP run per token, as upstream.
- ``block``: per layer, the plan comes from the self-attention input (``norm1`` of the tokens, plus the
  query position encoding where the layer adds it there), metric as the setting says (``"keys"``: the
  self-attention's ``k_proj`` of it); m = merge(x) (size-weighted mean residuals); self-attention over
  the merged tokens, cross-attention from them to the full memory, and the MLP run as upstream on m;
  every token leaves with its own residual plus its slot's change, x + unmerge(out - m) (the delta
  unmerge of :mod:`tomeplug_adapters.windowed_scopes`). r = 0 (no token merged) runs upstream's layer.
- ``span``: one plan for a run of consecutive span-scoped layers with equal settings (the whole stack
  when every layer is selected alike), made at the run's first layer; the delta unmerge happens once, at
  the run's end. ``MemoryAttention``'s class is swapped too (its loop walks the runs).

Positional terms: a merged token is rotated (RoPE) with the row of its representative (kept) token's
cell, in self-attention (queries and keys) and as a cross-attention query; the memory keys keep their
own rotations (upstream's table over the N cells, repeated per memory frame) and the object pointers
none. The additive query position encoding (``query_pos``, where ``pos_enc_at_attn`` or
``pos_enc_at_cross_attn_queries`` adds it) is merged as the tokens are (its size-weighted mean);
``pos_enc_at_input`` adds it to every token before the first layer, as upstream, before any merge.

``prop_attn`` adds ``log(size)`` to the self-attention logits only; the cross-attention's keys carry it
exactly when the memory is merged (``memory_r``), object pointers with size 1. There is no padding here:
``exclude_padding`` changes nothing. Each batch row (object) gets its own plan. ``SAM2VideoPredictorVOS``
replaces ``MemoryAttention.forward`` on the instance with a compiled one: ``span`` and ``memory_r`` refuse it
(its loop and the memory merge would be bypassed); compile the patched model instead (``fullgraph=True``
traces every scope).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.adapter import Adapter, class_path, class_paths
from tomeplug.classswap import swap_class
from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan, log_size_bias
from tomeplug.plan_cache import GroupPlanCache
from tomeplug.setting import Setting
from tomeplug_adapters.sam2_memory_keys import MergedMemory, check_memory_settings, memory_setting, merge_memory
from tomeplug_adapters.sam3_vit_attention import kept_rotations

SAM2_BASE = "sam2.modeling.sam2_base.SAM2Base"
MEMORY_ATTENTION = "sam2.modeling.memory_attention.MemoryAttention"
SAM2_CLASSES = (SAM2_BASE, MEMORY_ATTENTION)


def memory_attention(model: nn.Module, classes: tuple[str, str] = SAM2_CLASSES) -> nn.Module | None:
    """The ``MemoryAttention`` of a ``SAM2Base`` (or subclass, e.g. ``SAM2VideoPredictor``), or the module
    itself; else None. ``classes``: the class paths of the whole model and the memory attention (another
    package's copies)."""
    whole, module = classes
    if whole in class_paths(model):
        model = model.memory_attention
    return model if module in class_paths(model) else None


def has_rope(attn: nn.Module) -> bool:
    """Whether a sam2 attention is a ``RoPEAttention`` (any package's copy: it has the RoPE table and builder)."""
    return hasattr(attn, "freqs_cis") and hasattr(attn, "compute_cis")


def square_grid(n: int) -> tuple[int, int]:
    """The (h, w) grid of a frame's n tokens: square, as upstream's RoPE assumes (w = h = sqrt(n))."""
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"memory attention got {n} frame tokens, not a square grid; sam2's RoPE attention assumes one")
    return side, side


def rope_table(attn: nn.Module, n: int) -> Tensor | None:
    """The complex RoPE rows (n, hd / 2) of a sam2 ``RoPEAttention`` over n cells (None: no RoPE), as
    upstream picks them: its table if it has n rows, else one computed for a square grid of n cells."""
    if not has_rope(attn):
        return None
    if attn.freqs_cis.shape[0] == n:
        return attn.freqs_cis
    side = square_grid(n)[0]
    return attn.compute_cis(end_x=side, end_y=side)


def rotate(x: Tensor, rotations: Tensor) -> Tensor:
    """Rotate (B, heads, T, hd) by complex ``rotations`` broadcastable to (B, heads, T, hd / 2), pairing
    consecutive channels in float32 as sam2's ``apply_rotary_enc`` does; dtype kept."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotations).flatten(3).type_as(x)


class LayerContext(NamedTuple):
    """What a run of layers needs of one plan: the merged tokens' rotations and proportional-attention bias.

    Attributes:
        self_rotations: (B, 1, M, hd / 2) complex, the self-attention's RoPE rows at the kept cells, or None.
        cross_rotations: the same for the cross-attention's queries (its own table), or None.
        memory_table: the cross-attention's (N, hd / 2) table for the memory keys (upstream's, unmerged).
        log_size: (B, 1, 1, M) ``log(size)`` for the self-attention keys, or None.
    """

    self_rotations: Tensor | None
    cross_rotations: Tensor | None
    memory_table: Tensor | None
    log_size: Tensor | None


def layer_context(layer: nn.Module, plan: MergePlan, prop_attn: bool) -> LayerContext:
    """The :class:`LayerContext` of a plan of a frame's N tokens for layers shaped like ``layer``."""
    self_table, cross_table = layer.rope_tables(plan.num_tokens)
    return LayerContext(
        None if self_table is None else kept_rotations(self_table, plan.kept),
        None if cross_table is None else kept_rotations(cross_table, plan.kept),
        cross_table,
        log_size_bias(plan.size, plan.size.dtype) if prop_attn else None,
    )


def heads(attn: nn.Module, x: Tensor) -> Tensor:
    """(B, T, C) -> (B, heads, T, C / heads), as sam2's ``Attention._separate_heads``."""
    b, t, c = x.shape
    return x.reshape(b, t, attn.num_heads, c // attn.num_heads).transpose(1, 2)


def merged_self_attention(attn: nn.Module, qk: Tensor, v: Tensor, context: LayerContext) -> Tensor:
    """sam2's self-attention over merged tokens (B, M, C) -> (B, M, C): RoPE at the kept cells."""
    q, k, v = heads(attn, attn.q_proj(qk)), heads(attn, attn.k_proj(qk)), heads(attn, attn.v_proj(v))
    if context.self_rotations is not None:
        q, k = rotate(q, context.self_rotations), rotate(k, context.self_rotations)
    mask = None if context.log_size is None else context.log_size.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.dropout_p if attn.training else 0.0)
    b, _, m, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, m, -1))


def memory_key_rotations(attn: nn.Module, rope_keys: int, table: Tensor, merged: MergedMemory | None) -> Tensor:
    """The RoPE rows of the memory's first ``rope_keys`` keys: upstream's (cell j % N of the frame's (N, hd / 2)
    ``table``, repeated per memory frame), or a merged memory's (each merged key's kept cell)."""
    if merged is not None:
        return merged.key_rotations(table)
    repeats = rope_keys // table.shape[0]
    if repeats * table.shape[0] != rope_keys or (repeats > 1 and not attn.rope_k_repeat):
        raise ValueError(
            f"memory attention: {rope_keys} memory keys with RoPE for {table.shape[0]} frame tokens; "
            "upstream repeats the frame's rotations per memory frame (rope_k_repeat)"
        )
    return table.expand(repeats, *table.shape).reshape(rope_keys, -1)  # cell j % N


def merged_cross_attention(
    layer: nn.Module,
    q: Tensor,
    memory: Tensor,
    pos: Tensor | None,
    num_k_exclude_rope: int,
    query_rotations: Tensor | None,
    memory_table: Tensor | None,
    merged: MergedMemory | None,
) -> Tensor:
    """A layer's cross-attention from queries ``q`` (B, Q, C; norm and query position added) to the memory
    (B, T, C_mem) or its merged tokens ``merged``: -> (B, Q, C).

    Queries take ``query_rotations`` (the frame's table, or the rows of their kept cells; None: no RoPE);
    the memory's first T - ``num_k_exclude_rope`` keys (the spatial memory) their rows from ``memory_table``
    (:func:`memory_key_rotations`), the object-pointer keys after them none. A merged memory adds its
    ``log(size)`` to the logits.
    """
    attn = layer.cross_attn_image
    if merged is not None:
        memory, pos = merged.memory, merged.pos
    k = memory + pos if layer.pos_enc_at_cross_attn_keys else memory
    q, k, v = heads(attn, attn.q_proj(q)), heads(attn, attn.k_proj(k)), heads(attn, attn.v_proj(memory))
    if query_rotations is not None:
        q = rotate(q, query_rotations)
        rope_keys = k.shape[2] - num_k_exclude_rope
        if rope_keys > 0:
            rows = memory_key_rotations(attn, rope_keys, memory_table.to(k.device), merged)
            k = torch.cat([rotate(k[:, :, :rope_keys], rows), k[:, :, rope_keys:]], dim=2)
    mask = None if merged is None else merged.log_size.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.dropout_p if attn.training else 0.0)
    b, _, m, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, m, -1))


class MergingMemoryAttentionLayer(nn.Module):
    """Mixin over sam2's ``MemoryAttentionLayer``: the frame's tokens merged, and the memory with ``memory_r``."""

    tomeplug_setting: Setting
    tomeplug_memory_setting: Setting | None
    """The setting that plans the memory (the strategy at r = ``memory_r``), or None."""

    def merges(self, tgt: Tensor) -> bool:
        """Whether this layer merges any of the frame's tokens ``tgt`` (B, N, C)."""
        return self.tomeplug_setting.num_to_merge(tgt.shape[1]) > 0

    def rope_tables(self, n: int) -> tuple[Tensor | None, Tensor | None]:
        """The self- and cross-attention's complex RoPE tables (n, hd / 2) over a frame of n cells (None: no RoPE)."""
        return rope_table(self.self_attn, n), rope_table(self.cross_attn_image, n)

    def upstream_forward(
        self, tgt: Tensor, memory: Tensor, pos: Tensor | None, query_pos: Tensor | None, nk: int
    ) -> Tensor:
        """Upstream's layer, nothing merged."""
        return super().forward(tgt, memory, pos=pos, query_pos=query_pos, num_k_exclude_rope=nk)

    def upstream_self_attention(self, tgt: Tensor, query_pos: Tensor | None) -> Tensor:
        """Upstream's self-attention branch and its residual add, nothing merged: (B, N, C) -> (B, N, C)."""
        return self._forward_sa(tgt, query_pos)

    def merged_memory(
        self, memory: Tensor, pos: Tensor | None, num_pointers: int, n: int, plans: GroupPlanCache | None = None
    ) -> MergedMemory | None:
        """The memory merged as this layer's ``memory_r`` says, for a frame of n tokens (None: not merged);
        ``plans``: the memory frames' plans kept from earlier calls (None: plan every frame)."""
        return merge_memory(self, memory, pos, num_pointers, square_grid(n), plans)

    def mlp_residual(self, tgt: Tensor) -> Tensor:
        """Upstream's MLP branch and its residual add: (B, T, C) -> (B, T, C)."""
        return tgt + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(self.norm3(tgt))))))

    def attention_input(self, tokens: Tensor, query_pos: Tensor | None) -> Tensor:
        """The self-attention's query and key input: ``norm1(tokens)``, plus ``query_pos`` where upstream adds it."""
        normed = self.norm1(tokens)
        return normed + query_pos if self.pos_enc_at_attn else normed

    def plan(self, tgt: Tensor, query_pos: Tensor | None) -> MergePlan:
        """This layer's merge plan of the frame's tokens ``tgt`` (B, N, C)."""
        attn = self.self_attn
        inputs = self.attention_input(tgt, query_pos)
        return plan_merge(self.tomeplug_setting, inputs, None, attn.num_heads, square_grid(tgt.shape[1]), attn.k_proj)

    def merged_forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None,
        query_pos: Tensor | None,
        nk: int,
        context: LayerContext,
        merged: MergedMemory | None,
    ) -> Tensor:
        """Upstream's layer on merged tokens ``tgt`` (B, M, C) with merged ``query_pos`` (B, M, C) or None."""
        normed = self.norm1(tgt)
        qk = normed + query_pos if self.pos_enc_at_attn else normed
        tgt = tgt + self.dropout1(merged_self_attention(self.self_attn, qk, normed, context))
        rotations, table = context.cross_rotations, context.memory_table
        return self.cross_attention_and_mlp(tgt, query_pos, memory, pos, nk, rotations, table, merged)

    def cross_attention_and_mlp(
        self,
        tgt: Tensor,
        query_pos: Tensor | None,
        memory: Tensor,
        pos: Tensor | None,
        nk: int,
        rotations: Tensor | None,
        table: Tensor | None,
        merged: MergedMemory | None,
    ) -> Tensor:
        """The cross-attention of ``tgt`` (queries rotated by ``rotations``) to the memory and its residual, then
        the MLP residual, as upstream's layer ends (a layer without cross-attention, ``cross_attn_image`` None as
        sam3 removes it, runs the MLP alone)."""
        if self.cross_attn_image is None:
            return self.mlp_residual(tgt)
        normed = self.norm2(tgt)
        q = normed + query_pos if self.pos_enc_at_cross_attn_queries else normed
        attended = merged_cross_attention(self, q, memory, pos, nk, rotations, table, merged)
        return self.mlp_residual(tgt + self.dropout2(attended))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        num_k_exclude_rope: int = 0,
        tomeplug_memory: MergedMemory | None = None,
    ) -> Tensor:
        """Upstream's arguments; ``tomeplug_memory``: the memory merged once per call by the memory attention
        (without it, a layer that sets ``memory_r`` merges the memory itself, its pointers the RoPE-free keys)."""
        merged = tomeplug_memory
        if merged is None and self.tomeplug_memory_setting is not None:
            merged = self.merged_memory(memory, pos, num_k_exclude_rope, tgt.shape[1])
        if not self.merges(tgt):
            if merged is None:
                return self.upstream_forward(tgt, memory, pos, query_pos, num_k_exclude_rope)
            return self.memory_merged(tgt, memory, pos, query_pos, num_k_exclude_rope, merged)
        if self.tomeplug_setting.scope == "attn":
            return self.attention_merged(tgt, memory, pos, query_pos, num_k_exclude_rope, merged)
        return run_merged([self], tgt, memory, pos, query_pos, num_k_exclude_rope, merged)

    def memory_merged(
        self, tgt: Tensor, memory: Tensor, pos: Tensor | None, query_pos: Tensor | None, nk: int, merged: MergedMemory
    ) -> Tensor:
        """The frame's tokens unmerged, the memory merged: upstream's self-attention and MLP, the cross-attention
        to the merged memory (queries at their own cells' rotations)."""
        tgt = self.upstream_self_attention(tgt, query_pos)
        table = self.rope_tables(tgt.shape[1])[1]
        table = None if table is None else table.to(tgt.device)  # upstream's table follows the queries' device
        return self.cross_attention_and_mlp(tgt, query_pos, memory, pos, nk, table, table, merged)

    def attention_merged(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None,
        query_pos: Tensor | None,
        nk: int,
        merged: MergedMemory | None,
    ) -> Tensor:
        """Scope ``attn``: both attentions on merged inputs (one plan), each unmerged after its output
        projection (per token and linear: exact before the unmerge); residuals and the MLP per token."""
        plan = self.plan(tgt, query_pos)
        context = layer_context(self, plan, self.tomeplug_setting.prop_attn)
        normed = self.norm1(tgt)
        qk = normed + query_pos if self.pos_enc_at_attn else normed
        attended = merged_self_attention(self.self_attn, plan.merge(qk), plan.merge(normed), context)
        tgt = tgt + self.dropout1(plan.unmerge(attended))
        if self.cross_attn_image is not None:  # sam3 removes some layers' cross-attention
            normed = self.norm2(tgt)
            q = plan.merge(normed + query_pos if self.pos_enc_at_cross_attn_queries else normed)
            rotations, table = context.cross_rotations, context.memory_table
            attended = merged_cross_attention(self, q, memory, pos, nk, rotations, table, merged)
            tgt = tgt + self.dropout2(plan.unmerge(attended))
        return self.mlp_residual(tgt)


def run_merged(
    layers: Sequence[MergingMemoryAttentionLayer],
    tgt: Tensor,
    memory: Tensor,
    pos: Tensor | None,
    query_pos: Tensor | None,
    num_k_exclude_rope: int,
    merged_memory: MergedMemory | None = None,
) -> Tensor:
    """Run consecutive memory-attention layers on one plan's merged frame tokens: (B, N, C) -> (B, N, C).

    The plan is the first layer's (:meth:`MergingMemoryAttentionLayer.plan`); each token leaves with its
    own residual plus its slot's change ("delta unmerge"). ``merged_memory``: the memory they attend to,
    merged (None: upstream's).
    """
    first = layers[0]
    plan = first.plan(tgt, query_pos)
    merged = plan.merge(tgt)  # (B, M, C) size-weighted mean residuals
    uses_pos = any(layer.pos_enc_at_attn or layer.pos_enc_at_cross_attn_queries for layer in layers)
    merged_pos = plan.merge(query_pos) if uses_pos and query_pos is not None else None
    context = layer_context(first, plan, first.tomeplug_setting.prop_attn)  # once per plan
    out = merged
    for layer in layers:
        out = layer.merged_forward(out, memory, pos, merged_pos, num_k_exclude_rope, context, merged_memory)
    return tgt + plan.unmerge(out - merged)


def layer_runs(schedule: Mapping[int, Setting], depth: int) -> tuple[tuple[int, ...], ...]:
    """The layers in runs: maximal runs of consecutive span-scoped layers with equal settings, and every
    other layer alone. Computed from the schedule alone."""
    runs: list[list[int]] = []
    for index in range(depth):
        setting = schedule.get(index)
        spanning = setting is not None and setting.scope == "span"
        if spanning and index > 0 and runs and schedule.get(index - 1) == setting:
            runs[-1].append(index)
        else:
            runs.append([index])
    return tuple(tuple(run) for run in runs)


def batch_first_inputs(
    module: nn.Module, curr: Tensor, memory: Tensor, curr_pos: Tensor | None, memory_pos: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """A batch-first memory attention's input handling, as upstream's: the frame's tokens (N, B, C) plus
    0.1 x ``curr_pos`` where ``pos_enc_at_input``; every input (T, B, C) -> (B, T, C)."""
    if curr.shape[1] != memory.shape[1]:
        raise ValueError("memory attention: batch size must be the same for curr and memory")
    if module.pos_enc_at_input and curr_pos is not None:
        curr = curr + 0.1 * curr_pos
    inputs = (curr, memory, curr_pos, memory_pos)
    return tuple(None if x is None else x.transpose(0, 1) for x in inputs)


class MergingMemoryAttention(nn.Module):
    """Mixin over sam2's ``MemoryAttention`` (scope ``span``, option ``memory_r``): runs each span of layers on
    one plan, and merges the memory once per call for the layers that set ``memory_r``."""

    tomeplug_runs: tuple[tuple[int, ...], ...]
    tomeplug_memory_planner: int | None
    """The first layer that sets ``memory_r`` (its setting and cross-attention plan the memory), or None."""
    tomeplug_layer_arguments: ClassVar[Mapping[str, object]] = {}
    """Arguments upstream's loop passes every layer besides SAM 2's (sam3's: ``dac=False``)."""
    tomeplug_memory_plans: GroupPlanCache
    """The memory frames' plans, kept while the frames stay in the bank (:mod:`tomeplug_adapters.sam2_memory_keys`)."""

    def forward(
        self,
        curr: Tensor | list[Tensor],
        memory: Tensor,
        curr_pos: Tensor | list[Tensor] | None = None,
        memory_pos: Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> Tensor:
        if isinstance(curr, list):  # upstream's input handling, step for step
            if not isinstance(curr_pos, list) or not len(curr) == len(curr_pos) == 1:
                raise ValueError("memory attention takes one feature level: curr and curr_pos as 1-element lists")
            curr, curr_pos = curr[0], curr_pos[0]
        output, memory, curr_pos, memory_pos = batch_first_inputs(self, curr, memory, curr_pos, memory_pos)
        output = self.run_layers(output, memory, memory_pos, curr_pos, num_obj_ptr_tokens)
        return self.norm(output).transpose(0, 1)  # batch_first (the adapter refuses others)

    def run_layers(
        self, output: Tensor, memory: Tensor, memory_pos: Tensor | None, curr_pos: Tensor | None, num_pointers: int
    ) -> Tensor:
        """The layers run by runs on batch-first frame tokens (B, N, C), the memory merged once where a layer
        sets ``memory_r``: (B, N, C) -> (B, N, C), before the final norm."""
        merged = None
        if self.tomeplug_memory_planner is not None:
            planner = self.layers[self.tomeplug_memory_planner]
            plans = self.tomeplug_memory_plans
            merged = planner.merged_memory(memory, memory_pos, num_pointers, output.shape[1], plans)
        for run in self.tomeplug_runs:
            members = [self.layers[i] for i in run]
            nk = num_pointers if self.rotates_memory(members[0]) else 0
            setting = members[0].__dict__.get("tomeplug_setting")
            own = merged if setting is not None and setting.memory_r is not None else None
            if len(members) > 1 and members[0].merges(output):
                output = run_merged(members, output, memory, memory_pos, curr_pos, nk, own)
                continue
            for layer in members:
                output = self.call_layer(layer, output, memory, memory_pos, curr_pos, nk, own)
        return output

    def rotates_memory(self, layer: nn.Module) -> bool:
        """Whether a layer's cross-attention rotates the memory keys (RoPE), the pointers excluded."""
        return has_rope(layer.cross_attn_image)

    def call_layer(
        self,
        layer: nn.Module,
        output: Tensor,
        memory: Tensor,
        memory_pos: Tensor | None,
        curr_pos: Tensor | None,
        nk: int,
        merged: MergedMemory | None,
    ) -> Tensor:
        """One layer called as a module (its hooks fire) on (B, N, C) tokens; ``merged``: the call's merged memory."""
        kwds = dict(self.tomeplug_layer_arguments)
        if self.rotates_memory(layer):
            kwds["num_k_exclude_rope"] = nk
        if merged is not None:
            kwds["tomeplug_memory"] = merged
        return layer(tgt=output, memory=memory, pos=memory_pos, query_pos=curr_pos, **kwds)


class Sam2MemoryAttentionAdapter(Adapter):
    """sam2's MemoryAttention, alone or in a SAM2Base and subclasses (SAM2VideoPredictor): the frame's tokens"""

    name = "sam2_memory_attention"
    target = "memory_attention"
    scopes = ("attn", "block", "span")
    merges_memory = True
    classes: ClassVar[tuple[str, str]] = SAM2_CLASSES
    """The class paths of the whole model and its memory attention."""

    layer_mixin: ClassVar[type] = MergingMemoryAttentionLayer
    loop_mixin: ClassVar[type] = MergingMemoryAttention
    """The mixins swapped onto a merging layer and (span scope, ``memory_r``) onto the memory attention."""

    def memory_attention(self, model: nn.Module) -> nn.Module | None:
        """The model's memory attention (the module itself, or the one in the whole model), or None."""
        return memory_attention(model, self.classes)

    def matches(self, model: nn.Module) -> bool:
        """True for a ``SAM2Base`` (any subclass) or a ``MemoryAttention``."""
        return self.memory_attention(model) is not None

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The memory attention's ``layers`` (4 in the official models)."""
        module = self.memory_attention(model)
        if module is None:
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(module.layers)

    def prepare_layer(self, module: nn.Module, layer: nn.Module) -> None:
        """Check the memory attention and ready a layer's submodules before its class is swapped."""
        if not module.batch_first:
            raise ValueError(f"{self.name}: {type(module).__name__}(batch_first=False) is not supported")

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap layer ``index``'s class; with any span-scoped layer, also the memory attention's (its loop)."""
        module = self.memory_attention(model)
        layer = module.layers[index]
        self.prepare_layer(module, layer)
        swap_class(layer, self.layer_mixin)
        layer.tomeplug_setting = schedule[index]
        layer.tomeplug_memory_setting = memory_setting(schedule[index])
        planner = check_memory_settings(schedule, self.name)
        if planner is not None or any(setting.scope == "span" for setting in schedule.values()):
            if "forward" in module.__dict__:
                raise ValueError(
                    f"{self.name}: this memory attention's forward is replaced on the instance (compiled, e.g. by "
                    "SAM2VideoPredictorVOS or a sam3 tracker's compile_mode), which would bypass the span loop and "
                    "the memory merge; build the model uncompiled and compile the patched model, or use "
                    "scope='block' without memory_r"
                )
            swap_class(module, self.loop_mixin)
            module.tomeplug_runs = layer_runs(schedule, len(module.layers))
            module.tomeplug_memory_planner = planner
            module.tomeplug_memory_plans = GroupPlanCache()  # each memory frame planned once while in the bank

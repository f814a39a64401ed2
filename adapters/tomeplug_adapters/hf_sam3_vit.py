"""SAM 3 in Hugging Face transformers: merging in the image encoder's ViT (``Sam3ViTModel``).

transformers' SAM 3 ViT is sam3's (:mod:`tomeplug_adapters.sam3_vit`) under other names: ``Sam3ViTModel``
runs ``layers`` of ``Sam3ViTLayer`` on (B, H, W, C) maps; a layer normalises (``layer_norm1``), pads the
map at its bottom and right edges and cuts row-major windows exactly as
:func:`tomeplug_adapters.windowed_scopes.partition` does (``window_size`` 0: the whole grid), and its
``Sam3ViTRoPEAttention`` projects q, k and v separately (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``)
and rotates q and k with 2D axial RoPE. The layer's ``rotary_emb`` turns its ``position_ids`` into a
(cos, sin) table, one row per cell of the attention call, and rotates consecutive channel pairs
(``rotate_pairwise``), which is multiplying each pair by ``complex(cos, sin)``: the table is read as
sam3's complex ``freqs_cis`` (:func:`rope_table`) and the merging math is sam3's, called, not copied
(:func:`~tomeplug_adapters.sam3_vit_attention.kept_rotations`, ``apply_rotations``, ``attend``; the
windowed block and span machinery). The attention's class is swapped for a mixin that gives it the names
that code reads (``qkv``, ``num_heads``, ``proj``). Scopes:

- ``attn``: the attention merges its input, runs q/k/v, RoPE and attention, projects and unmerges.
- ``block`` and ``span``: attention and MLP on merged tokens, for one layer or a run of consecutive
  windowed layers on one plan (:mod:`tomeplug_adapters.windowed_scopes`). A span ends before a global
  layer. With any span-scoped layer the ``Sam3ViTModel``'s class is swapped too (its loop walks the runs;
  its output stays a ``BaseModelOutput``).

The adapter matches ``Sam3ViTModel`` and any transformers SAM 3 model holding exactly one (``Sam3Model``,
``Sam3VisionModel``, ``Sam3TrackerModel``, ``Sam3TrackerVideoModel``, ``Sam3VideoModel``). Merged attention
calls run ``F.scaled_dot_product_attention`` whatever ``attn_implementation`` says (the eager math; r = 0
calls run upstream's own). As in :mod:`tomeplug_adapters.hf_sam_vit`, merged layers have no dense attention
weights, so ``output_attentions`` raises when a layer merges, and ``output_hidden_states`` raises where a span
runs several layers on one plan (in scopes ``attn`` and ``block`` every layer's output is recorded as
upstream records it). Not supported: attention dropout in training (``attention_dropout`` > 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from tomeplug.adapter import Adapter, class_path, sole_module
from tomeplug.classswap import swap_class
from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan
from tomeplug.setting import Setting
from tomeplug_adapters.hf_outputs import recording, refuse_recording, register_recording
from tomeplug_adapters.sam3_vit_attention import MergedRope, attend, kept_rotations
from tomeplug_adapters.sam_vit_attention import plan_positions
from tomeplug_adapters.windowed_scopes import MergingWindowedBlock, patch_encoder_loop, run_blocks, run_merged

__all__ = ["HFSam3ViTAdapter", "MergingHFSam3Attention", "MergingHFSam3Layer", "MergingHFSam3ViT", "hf_sam3_vit"]

VIT = "transformers.models.sam3.modeling_sam3.Sam3ViTModel"
SAM3_PACKAGES = "transformers.models.sam3"  # sam3, sam3_tracker, sam3_tracker_video, sam3_video, ...


def hf_sam3_vit(model: nn.Module) -> nn.Module | None:
    """The ``Sam3ViTModel`` of a transformers SAM 3 model or a subclass of one (itself, or the one inside); else
    None.

    Raises:
        ValueError: the model holds more than one.
    """
    return sole_module(model, VIT, SAM3_PACKAGES)


def rope_table(position_embeddings: tuple[Tensor, Tensor], n: int) -> Tensor:
    """transformers' RoPE (cos, sin), each (1, N, hd) with every angle repeated for its channel pair, as
    sam3's complex (N, hd / 2) ``freqs_cis``; ``n``: the attention call's token count."""
    cos, sin = position_embeddings
    if cos.shape[-2] != n:
        raise ValueError(
            f"Sam3ViTLayer's RoPE table has {cos.shape[-2]} rows for an attention call of {n} tokens; feed the ViT "
            "images of the size its config was built for (image_size)"
        )
    pairs = torch.stack([cos.reshape(n, -1)[:, ::2], sin.reshape(n, -1)[:, ::2]], dim=-1)  # (N, hd / 2, 2)
    return torch.view_as_complex(pairs.float().contiguous())


def merged_context(
    position_embeddings: tuple[Tensor, Tensor],
    plan: MergePlan,
    grid: tuple[int, int],
    setting: Setting,
    dtype: torch.dtype,
) -> MergedRope:
    """The merged tokens' RoPE rotations (at their kept cells) and positions, once per plan."""
    rotations = kept_rotations(rope_table(position_embeddings, grid[0] * grid[1]), plan.kept)
    return MergedRope(rotations, plan_positions(plan, grid, setting.prop_attn, dtype))


def merge_plan(attn: nn.Module, setting: Setting, tokens: Tensor, grid: tuple[int, int]) -> MergePlan:
    """The plan of one attention call's tokens (B', N, C); the keys metric from ``k_proj``."""
    return plan_merge(setting, tokens, None, attn.num_attention_heads, grid, key_proj=attn.k_proj)


class HFSam3AttentionNames(nn.Module):
    """Mixin over ``Sam3ViTRoPEAttention`` giving it the names sam3's merged attention reads (forward unchanged)."""

    use_rel_pos = False

    @property
    def num_heads(self) -> int:
        """``num_attention_heads``."""
        return self.num_attention_heads

    @property
    def proj(self) -> nn.Module:
        """The output projection ``o_proj``."""
        return self.o_proj

    def qkv(self, x: Tensor) -> Tensor:
        """q, k and v of ``x`` (B', M, C) side by side: (B', M, 3C), as a fused projection lays them out."""
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)


def check_training(attn: nn.Module) -> None:
    """Refuse attention dropout in training, which the merged attention does not apply."""
    if attn.training and attn.attention_dropout > 0:
        raise ValueError(
            "hf_sam3_vit: merged attention applies no attention dropout; call model.eval() or set "
            "attention_dropout=0 in the Sam3ViTConfig"
        )


class MergingHFSam3Attention(HFSam3AttentionNames):
    """Mixin over ``Sam3ViTRoPEAttention`` (scope ``attn``): merges each attention call's tokens.

    The call's input is (B', h, w, C): a batch of windows, or the whole grid of a global layer.
    """

    tomeplug_setting: Setting

    def forward(self, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor], **kwargs):
        setting = self.tomeplug_setting
        b, h, w, c = hidden_states.shape
        if setting.num_to_merge(h * w) == 0:
            return super().forward(hidden_states, position_embeddings, **kwargs)  # r = 0: upstream, bit for bit
        refuse_recording("attentions")
        check_training(self)
        tokens = hidden_states.reshape(b, h * w, c)
        plan = merge_plan(self, setting, tokens, (h, w))
        context = merged_context(position_embeddings, plan, (h, w), setting, tokens.dtype)
        out = plan.unmerge(attend(self, plan.merge(tokens), context))  # projection before the unmerge
        return out.reshape(b, h, w, -1), None


class MergingHFSam3Layer(MergingWindowedBlock):
    """Mixin over ``Sam3ViTLayer`` (scopes ``block`` and ``span``): attention and MLP on merged tokens."""

    def attention_norm(self, tokens: Tensor) -> Tensor:
        """``layer_norm1``."""
        return self.layer_norm1(tokens)

    def plan(self, normed: Tensor, grid: tuple[int, int]) -> MergePlan:
        """The plan from the normalised tokens; the keys metric from ``k_proj``."""
        return merge_plan(self.attention, self.tomeplug_setting, normed, grid)

    def merged_context(self, plan: MergePlan, grid: tuple[int, int], dtype: torch.dtype) -> MergedRope:
        """The layer's RoPE table (from its ``position_ids``) at the kept cells, and the positions."""
        check_training(self.attention)
        table = self.rotary_emb(self.position_ids, self.position_ids)
        return merged_context(table, plan, grid, self.tomeplug_setting, dtype)

    def merged_attend(self, tokens: Tensor, context: MergedRope) -> Tensor:
        """The layer's attention over merged tokens, ``o_proj`` included."""
        return attend(self.attention, tokens, context)

    def merged_mlp(self, tokens: Tensor) -> Tensor:
        """``dropout(mlp(layer_norm2(tokens)))`` as upstream (its attention branch has no dropout)."""
        return self.dropout(self.mlp(self.layer_norm2(tokens)))

    def forward(self, hidden_states: Tensor, **kwargs) -> Tensor:
        if not self.merges(hidden_states):
            return super(MergingWindowedBlock, self).forward(hidden_states, **kwargs)  # upstream, bit for bit
        refuse_recording("attentions")
        return run_merged([self], hidden_states)


class MergingHFSam3ViT(nn.Module):
    """Mixin over ``Sam3ViTModel`` (scope ``span``): runs each span of layers on one plan."""

    tomeplug_runs: tuple[tuple[int, ...], ...]

    @property
    def blocks(self) -> nn.ModuleList:
        """``layers``, under the name the span machinery reads."""
        return self.layers

    def forward(self, pixel_values: Tensor, **kwargs):
        return recording(run_spans)(self, pixel_values, **kwargs)  # under upstream's output capture


def run_spans(vit: nn.Module, pixel_values: Tensor, **kwargs):
    """Upstream ``Sam3ViTModel.forward`` with the layers run span by span: a ``BaseModelOutput`` (``kwargs``: the
    output flags, read by the capture)."""
    from transformers.modeling_outputs import BaseModelOutput

    firsts = [vit.layers[run[0]] for run in vit.tomeplug_runs if len(run) > 1]  # windowed layers
    if any(first.tomeplug_setting.num_to_merge(first.window_size**2) for first in firsts):  # never run alone
        refuse_recording("hidden_states")
        refuse_recording("attentions")
    hidden_states = vit.embeddings(pixel_values)  # (B, H * W, C)
    b, c = hidden_states.shape[0], hidden_states.shape[-1]
    h, w = pixel_values.shape[-2] // vit.config.patch_size, pixel_values.shape[-1] // vit.config.patch_size
    hidden_states = vit.layer_norm(hidden_states.view(b, h, w, c))
    for _, out in run_blocks(vit.layers, vit.tomeplug_runs, hidden_states):
        hidden_states = out
    return BaseModelOutput(last_hidden_state=hidden_states.view(b, h * w, c))


class HFSam3ViTAdapter(Adapter):
    """transformers' Sam3ViTModel (SAM 3 image encoder), alone or inside Sam3Model and the SAM 3 tracker/video models"""

    name = "hf_sam3_vit"
    scopes = ("attn", "block", "span")

    def matches(self, model: nn.Module) -> bool:
        """True for ``Sam3ViTModel``, or a transformers SAM 3 model holding exactly one."""
        try:
            return hf_sam3_vit(model) is not None
        except ValueError:
            return False

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The ViT's ``layers``, windowed and global alike (SAM 3 has 32)."""
        vit = hf_sam3_vit(model)
        if vit is None:
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(vit.layers)

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the layer's attention (scope ``attn``), or the layer and its attention (``block``, ``span``);
        with any span-scoped layer, also the ViT (its loop runs spans of layers on one plan)."""
        vit, setting = hf_sam3_vit(model), schedule[index]
        layer = vit.layers[index]
        if setting.scope == "attn":
            swap_class(layer.attention, MergingHFSam3Attention)
            layer.attention.tomeplug_setting = setting
        else:
            swap_class(layer.attention, HFSam3AttentionNames)
            swap_class(layer, MergingHFSam3Layer)
            layer.tomeplug_setting = setting
        patch_encoder_loop(vit, MergingHFSam3ViT, schedule)  # runs end at global layers (never in a run)
        register_recording(vit)

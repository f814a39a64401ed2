"""SAM 3 (Meta's sam3 package): merging in the image encoder's ViT (``sam3.model.vitdet.ViT``).

SAM 3's ViT (32 blocks at 1008 px: a 72x72 grid, 24x24 windows, global blocks 7, 15, 23, 31) runs
``Block`` -> ``Attention`` on (B, H, W, C) maps. A windowed block normalises, pads the map with zeros at
its bottom and right edges and cuts 24x24 windows exactly as :func:`tomeplug_adapters.windowed_scopes.partition`
does (row-major windows, row-major cells), so the shared block and span machinery applies unchanged. The
attention rotates q and k with 2D axial RoPE (``freqs_cis``, one row per cell of the attention call);
merged tokens are rotated at their kept tokens' cells (:mod:`tomeplug_adapters.sam3_vit_attention`).
The absolute positions are added once, before the blocks, and stay untouched; LayerScale (``ls1``,
``ls2``, when the ViT has ``init_values``) scales each branch on the merged tokens as upstream does per
token. How much of the encoder runs on merged tokens is the setting's ``scope``:

- ``attn``: the attention merges its input, runs qkv, RoPE and attention, projects and unmerges.
- ``block`` and ``span``: attention and MLP on merged tokens, for one block or a run of consecutive
  windowed blocks on one plan (semantics in :mod:`tomeplug_adapters.windowed_scopes`). A span ends
  before a global block (whose output the encoder returns), a block of another scope or setting, or
  the end. With any span-scoped block the ViT's class is swapped too (its loop walks the runs).

The adapter matches the ViT itself and any sam3 model that holds exactly one (``Sam3Image`` and its
``backbone.vision_backbone.trunk``, the tracker built with a backbone, the video model's detector).
Not supported: a ViT that keeps a class token (``retain_cls_token``; it cannot window), and span scope
on a ViT built with ``compile_mode`` (its compiled ``forward`` bypasses the swapped loop; compile the
patched model instead).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from tomeplug.adapter import Adapter, class_path, sole_module
from tomeplug.classswap import swap_class
from tomeplug.plan import MergePlan
from tomeplug.setting import Setting
from tomeplug_adapters.sam3_vit_attention import MergedRope, MergingSam3Attention, attend, merged_rope
from tomeplug_adapters.windowed_scopes import MergingWindowedBlock, patch_encoder_loop, run_blocks

__all__ = ["MergingSam3Block", "MergingSam3ViT", "Sam3ViTAdapter", "sam3_vit"]

VIT = "sam3.model.vitdet.ViT"


def sam3_vit(model: nn.Module, vit_class: str = VIT, package: str = "sam3.") -> nn.Module | None:
    """The ViT of a sam3 model (the ``ViT`` itself, or the one ``ViT`` among a sam3 model's modules); else None.

    ``vit_class`` and ``package`` (a module prefix) name another package's copy of the ViT and its models.

    Raises:
        ValueError: the model holds more than one ViT.
    """
    return sole_module(model, vit_class, package)


class MergingSam3Block(MergingWindowedBlock):
    """Mixin over sam3's ViT ``Block`` (scopes ``block`` and ``span``): attention and MLP on merged tokens."""

    def merged_context(self, plan: MergePlan, grid: tuple[int, int], dtype: torch.dtype) -> MergedRope:
        """The merged tokens' RoPE rotations (gathered once per plan) and positions."""
        return merged_rope(self.attn, plan, grid, self.tomeplug_setting.prop_attn, dtype)

    def merged_attend(self, tokens: Tensor, context: MergedRope) -> Tensor:
        """sam3's attention over merged tokens, then LayerScale ``ls1`` as upstream."""
        return self.ls1(attend(self.attn, tokens, context))

    def merged_mlp(self, tokens: Tensor) -> Tensor:
        """The MLP branch on merged tokens, LayerScale ``ls2`` included."""
        return self.ls2(self.mlp(self.norm2(tokens)))

    def residual(self, delta: Tensor) -> Tensor:
        """Upstream's stochastic depth and dropout (the identity in eval mode)."""
        return self.dropout(self.drop_path(delta))


class MergingSam3ViT(nn.Module):
    """Mixin over sam3's ``ViT`` (scope ``span``): runs each span of blocks on one plan.

    Upstream's activation checkpointing in training is not applied (outputs are the same).
    """

    tomeplug_runs: tuple[tuple[int, ...], ...]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)  # (B, H, W, C)
        if self.pos_embed is not None:
            x = x + abs_pos(self, x.shape[1:3])
        x = self.ln_pre(x)
        outputs = []
        for last, out in run_blocks(self.blocks, self.tomeplug_runs, x):
            if last == self.full_attn_ids[-1]:
                outputs.append(self.ln_post(out).permute(0, 3, 1, 2))  # (B, C, H, W) as upstream
                break  # upstream runs any later blocks but returns nothing of them
            if self.return_interm_layers and last in self.full_attn_ids:
                outputs.append(out.permute(0, 3, 1, 2))
        return outputs


def abs_pos(vit: nn.Module, hw: torch.Size) -> Tensor:
    """sam3 ViT's absolute positions for an (H, W) grid, as upstream computes them: (1, H, W, C).

    ``get_abs_pos`` is read from the module defining the ViT's class (sam3's, or a package's copy of it)."""
    vitdet = sys.modules[getattr(type(vit), "_tomeplug_base", type(vit)).__module__]
    return vitdet.get_abs_pos(vit.pos_embed, vit.pretrain_use_cls_token, tuple(hw), False, tiling=vit.tile_abs_pos)


class Sam3ViTAdapter(Adapter):
    """sam3's ViT (SAM 3 image encoder), alone or inside Sam3Image, its backbone, tracker or video model"""

    name = "sam3_vit"
    scopes = ("attn", "block", "span")
    vit_class: ClassVar[str] = VIT
    package: ClassVar[str] = "sam3."
    """The module prefix of the models searched for the ViT."""

    def vit(self, model: nn.Module) -> nn.Module | None:
        """:func:`sam3_vit` for this adapter's package."""
        return sam3_vit(model, self.vit_class, self.package)

    def matches(self, model: nn.Module) -> bool:
        """True for sam3's ``ViT``, or a sam3 model holding exactly one."""
        try:
            return self.vit(model) is not None
        except ValueError:
            return False

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The ViT's ``blocks``, windowed and global alike (SAM 3 has 32)."""
        vit = self.vit(model)
        if vit is None:
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(vit.blocks)

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the block's attention (scope ``attn``) or the block itself (``block``, ``span``); with any
        span-scoped block, also the ViT (its loop runs spans of blocks on one plan)."""
        vit, setting = self.vit(model), schedule[index]
        if vit.retain_cls_token:
            raise ValueError(f"{self.name} cannot merge a ViT that keeps a class token (retain_cls_token=True)")
        if setting.scope == "span" and "forward" in vit.__dict__:
            raise ValueError(
                f"{self.name}: span scope needs the ViT's own loop, but this ViT was built with compile_mode "
                "(a compiled forward); build it without compile_mode and torch.compile the patched model"
            )
        block = vit.blocks[index]
        module = block.attn if setting.scope == "attn" else block
        swap_class(module, MergingSam3Attention if setting.scope == "attn" else MergingSam3Block)
        module.tomeplug_setting = setting
        patch_encoder_loop(vit, MergingSam3ViT, schedule, stops=frozenset(vit.full_attn_ids))

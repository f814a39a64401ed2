"""SAM 2 / 2.1 (sam2) Hiera: merging in the trunk's ``MultiScaleAttention``.

A Hiera block hands its attention one batch of attention calls shaped (B', h, w, C): the windows of a
windowed block (zero-padded at the grid's edge, B' = batch x windows), or the whole map of a global
block (B' = batch). Hiera's attention has no positional terms (positions are added once, at the
trunk's input), so a merged token needs none gathered. Every call plans a merge of its h * w tokens.

How much of the trunk runs on merged tokens is the setting's ``scope``:

- ``attn`` (the published method): windowed and global blocks merge every token before qkv, attend over
  the merged tokens, project (per token and linear, so exact before the unmerge) and unmerge.
- ``block`` and ``span``: attention and MLP on merged tokens, for one block or a run of consecutive
  windowed blocks on one plan (semantics in :mod:`tomeplug_adapters.windowed_scopes`; Hiera's pieces in
  :mod:`tomeplug_adapters.sam2_hiera_scopes`). A span runs within one stage and one window size: it
  ends before a global block, a stage transition, a block of another scope or setting, and at every
  stage's last block (the trunk returns its output). With any span-scoped block the trunk's class is
  swapped too (it walks the runs).

Stage-transition blocks pool the queries (``q_pool``, a 2x2 max pool of q): their output has one row
per pooled query, so there is nothing to unmerge, and their residual changes channels. In every scope
they merge keys and values only: q is computed from the unmerged tokens and pooled as upstream does
(max pooling does not commute with averaging), k and v are computed from the merged tokens (exactly
the merge of per-token k and v: qkv is affine and a merge is an average), and every pooled query
attends over the merged keys.

The metric and the padding option are the shared ones (:func:`tomeplug.metric.plan_merge`): the
attention input (in a q-pooling block, its fewer input channels) or the keys, averaged over heads. The
zero-padding tokens of edge windows (Hiera-T/S/B+ pad 64x64 maps into 14x14 windows at 1024 px) are
keys to upstream's attention; they merge like real tokens unless ``exclude_padding`` keeps them apart.
The block crops their output rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import nn

from tomeplug.adapter import Adapter, class_path, class_paths
from tomeplug.classswap import swap_class
from tomeplug.presets import PAPER_PARAMS, Preset
from tomeplug.setting import Setting
from tomeplug_adapters.sam2_hiera_attention import MergingMultiScaleAttention, merged_attention
from tomeplug_adapters.sam2_hiera_scopes import MergingHiera, MergingHieraBlock, keeps_shape
from tomeplug_adapters.windowed_scopes import patch_encoder_loop

__all__ = ["MergingMultiScaleAttention", "Sam2HieraAdapter", "hiera_trunk", "merged_attention"]

SAM2_BASE = "sam2.modeling.sam2_base.SAM2Base"
IMAGE_ENCODER = "sam2.modeling.backbones.image_encoder.ImageEncoder"
HIERA = "sam2.modeling.backbones.hieradet.Hiera"
SAM2_CLASSES = (SAM2_BASE, IMAGE_ENCODER, HIERA)


def hiera_trunk(model: nn.Module, classes: tuple[str, str, str] = SAM2_CLASSES) -> nn.Module | None:
    """The Hiera trunk of a ``SAM2Base`` (or subclass), an ``ImageEncoder`` or a ``Hiera``; else None.

    ``classes``: the class paths of the model, the image encoder and the trunk (another package's copies).
    """
    whole, encoder, trunk = classes
    if whole in class_paths(model):
        model = model.image_encoder
    if encoder in class_paths(model):
        model = model.trunk
    return model if trunk in class_paths(model) else None


class Sam2HieraAdapter(Adapter):
    """sam2's SAM2Base (and subclasses, e.g. SAM2VideoPredictor), ImageEncoder or Hiera (SAM 2 / 2.1)"""

    name = "sam2_hiera"
    scopes = ("attn", "block", "span")
    classes: ClassVar[tuple[str, str, str]] = SAM2_CLASSES
    """The class paths of the whole model, its image encoder and the Hiera trunk."""
    presets = (Preset("paper", "SAM 2.1 Hiera-L", 48, (31, 32, 34, 35, 37, 38, 44, 45, 46, 47), PAPER_PARAMS),)
    """PiToMe (NeurIPS 2024) on SAM 2.1 Hiera-L: 10 of 48 blocks, all in the last stages."""

    def matches(self, model: nn.Module) -> bool:
        """True for a ``SAM2Base`` or ``ImageEncoder`` with a Hiera trunk, or the ``Hiera`` itself."""
        return hiera_trunk(model, self.classes) is not None

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The trunk's ``blocks``: windowed, global and q-pooling alike (Hiera-L has 48)."""
        trunk = hiera_trunk(model, self.classes)
        if trunk is None:
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(trunk.blocks)

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the block's attention (scope ``attn``, and stage transitions in every scope) or the block;
        with any span-scoped block, also the trunk (its loop runs spans of blocks on one plan)."""
        trunk, setting = hiera_trunk(model, self.classes), schedule[index]
        block = trunk.blocks[index]
        module = block if setting.scope != "attn" and keeps_shape(block) else block.attn
        swap_class(module, MergingHieraBlock if module is block else MergingMultiScaleAttention)
        module.tomeplug_setting = setting
        patch_encoder_loop(trunk, MergingHiera, schedule, keeps_shape, frozenset(trunk.stage_ends))

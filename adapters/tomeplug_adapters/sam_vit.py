"""SAM ViT (segment_anything) and HQ-SAM (segment_anything_hq): merging in the image encoder.

Both packages share the ViT encoder design: blocks run attention on 14x14 windows (zero-padded at the
grid's edge) or on the whole grid, with decomposed relative positions. A plan is made per attention call
(the batch of windows is one batch of token groups) from the attention input, and merged tokens attend
with the relative positions of their kept tokens (:mod:`tomeplug_adapters.sam_vit_attention`). How much
of the encoder runs on merged tokens is the setting's ``scope``:

- ``attn`` (the published method): the attention module merges its input, runs qkv and attention,
  projects and unmerges. The residual and the MLP stay on every token.
- ``block`` and ``span``: attention and MLP on merged tokens, for one block or a run of consecutive
  windowed blocks on one plan (semantics in :mod:`tomeplug_adapters.windowed_scopes`). All of SAM's
  windowed blocks share one window partition, so a span runs until a global block, a block of another
  scope or setting, or the neck. A span-scoped global block behaves like ``block`` scope. With any
  span-scoped block the encoder's class is swapped too (it walks the runs), so HQ-SAM's intermediate
  embeddings (after global blocks) are unmerged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from torch import nn

from tomeplug.adapter import Adapter, class_path
from tomeplug.classswap import swap_class
from tomeplug.presets import PAPER_PARAMS, Preset
from tomeplug.setting import Setting
from tomeplug_adapters.sam_vit_attention import MergingSamAttention, merged_attention, rel_pos_bias, resized_rel_pos
from tomeplug_adapters.sam_vit_scopes import MergingHQSamEncoder, MergingSamBlock, MergingSamEncoder
from tomeplug_adapters.windowed_scopes import patch_encoder_loop

__all__ = ["HQSamViTAdapter", "MergingSamAttention", "SamViTAdapter", "merged_attention", "rel_pos_bias"]
__all__ += ["resized_rel_pos"]


class SamViTAdapter(Adapter):
    """segment_anything's Sam or ImageEncoderViT (SAM ViT-B/L/H)"""

    name = "sam_vit"
    model_classes: ClassVar[tuple[str, ...]] = ("segment_anything.modeling.sam.Sam",)
    """The package's whole models (class paths), holding the encoder as ``encoder_attr``."""
    encoder_class: ClassVar[str] = "segment_anything.modeling.image_encoder.ImageEncoderViT"
    encoder_attr: ClassVar[str] = "image_encoder"
    blocks_attr: ClassVar[str] = "blocks"
    scopes = ("attn", "block", "span")
    encoder_mixin: ClassVar[type] = MergingSamEncoder
    presets = (Preset("paper", "SAM / HQ-SAM ViT-L", 24, (0, 4, 5, 10, 16, 17, 19, 20, 22, 23), PAPER_PARAMS),)
    """PiToMe (NeurIPS 2024) on SAM / HQ-SAM ViT-L: 10 of 24 blocks."""

    def _encoder(self, model: nn.Module) -> nn.Module | None:
        path = class_path(model)
        if path in self.model_classes:
            model = getattr(model, self.encoder_attr)
            path = class_path(model)
        return model if path == self.encoder_class else None

    def matches(self, model: nn.Module) -> bool:
        """True for the package's whole model with a ViT encoder (``Sam``), or the encoder itself."""
        return self._encoder(model) is not None

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The encoder's blocks (``blocks_attr``), windowed and global alike."""
        encoder = self._encoder(model)
        if encoder is None:
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(getattr(encoder, self.blocks_attr))

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the block's attention (scope ``attn``) or the block itself (``block``, ``span``); with any
        span-scoped block, also the encoder (its loop runs spans of blocks on one plan)."""
        encoder, setting = self._encoder(model), schedule[index]
        block = encoder.blocks[index]
        module = block.attn if setting.scope == "attn" else block
        swap_class(module, MergingSamAttention if setting.scope == "attn" else MergingSamBlock)
        module.tomeplug_setting = setting
        patch_encoder_loop(encoder, self.encoder_mixin, schedule)


class HQSamViTAdapter(SamViTAdapter):
    """segment_anything_hq's Sam or ImageEncoderViT (HQ-SAM ViT-B/L/H)"""

    name = "hq_sam_vit"
    model_classes = ("segment_anything_hq.modeling.sam.Sam",)
    encoder_class = "segment_anything_hq.modeling.image_encoder.ImageEncoderViT"
    encoder_mixin = MergingHQSamEncoder

"""Hugging Face transformers' SAM and SAM-HQ: merging in the vision encoder, with the SAM ViT code.

transformers' ``SamVisionEncoder`` (in ``SamModel`` and ``SamVisionModel``) and ``SamHQVisionEncoder`` (in
``SamHQModel`` and ``SamHQVisionModel``) are SAM's ViT under other names: ``layers`` of ``SamVisionLayer``
(``layer_norm1``, an attention that windows nothing itself, ``layer_norm2``, ``mlp``; the layer windows its
own input), attentions ``SamVisionAttention`` (eager) or ``SamVisionSdpaAttention`` with ``qkv``, ``proj``,
decomposed relative positions and ``num_attention_heads``, returning ``(output, weights)``. The merging is
SAM ViT's, called, not copied: :mod:`tomeplug_adapters.sam_vit_attention` attends over merged tokens and
:mod:`tomeplug_adapters.windowed_scopes` runs blocks and spans; mixins swapped onto transformers' modules
map the names:

- ``attn``: the attention becomes :class:`MergingHFSamAttention` (SAM's merging attention, returning
  ``(output, None)``).
- ``block`` and ``span``: the layer becomes :class:`MergingHFSamLayer` (norms ``layer_norm1`` /
  ``layer_norm2``) and its attention gets :class:`HFSamAttentionNames` (``num_heads``). With any
  span-scoped layer the encoder becomes :class:`MergingHFSamEncoder`: its loop walks the runs, and it keeps
  the encoder's interface (its output dataclass, ``return_dict``, recorded ``attentions``); SAM-HQ's
  ``intermediate_embeddings`` (global layers' outputs) are unmerged, dense-layout maps as upstream's.

Merged layers have no dense attention weights: ``output_attentions`` raises when a layer merges, and so
does ``output_hidden_states`` where a span runs several layers on one plan (no per-layer map exists; in
scopes ``attn`` and ``block`` every layer's output is recorded as upstream records it).
Both ``attn_implementation`` values merge through the same SDPA attention; ``r = 0`` runs upstream's.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from tomeplug.adapter import class_path, class_paths
from tomeplug.classswap import swap_class
from tomeplug.setting import Setting
from tomeplug_adapters.hf_outputs import recording, refuse_recording, register_recording
from tomeplug_adapters.sam_vit import SamViTAdapter
from tomeplug_adapters.sam_vit_attention import MergingSamAttention
from tomeplug_adapters.sam_vit_scopes import MergingSamBlock, MergingSamEncoder
from tomeplug_adapters.windowed_scopes import patch_encoder_loop


def refuse_dropout(attn: nn.Module) -> None:
    """Raise if ``attn`` trains with attention dropout, which SAM's merged attention does not apply."""
    if attn.training and attn.dropout > 0:
        raise ValueError(
            f"attention_dropout={attn.dropout} in training: tomeplug's merged SAM attention has no attention "
            "dropout. Set config.attention_dropout = 0 (SAM's checkpoints use 0) or call model.eval()."
        )


class HFSamAttentionNames(nn.Module):
    """Mixin over transformers' SAM vision attention: the names SAM ViT's merging code reads."""

    @property
    def num_heads(self) -> int:
        """The number of attention heads (transformers' ``num_attention_heads``)."""
        return self.num_attention_heads


class MergingHFSamAttention(HFSamAttentionNames, MergingSamAttention):
    """Mixin over transformers' ``SamVisionAttention`` / ``SamVisionSdpaAttention`` (scope ``attn``)."""

    def forward(self, hidden_states: Tensor, output_attentions: bool | None = None) -> tuple[Tensor, Tensor | None]:
        _, h, w, _ = hidden_states.shape  # (B', h, w, C): a batch of windows, or the whole map
        if self.tomeplug_setting.num_to_merge(h * w) == 0:
            return super(MergingSamAttention, self).forward(hidden_states, output_attentions)  # upstream's
        refuse_recording("attentions")
        refuse_dropout(self)
        return MergingSamAttention.forward(self, hidden_states), None


class MergingHFSamLayer(MergingSamBlock):
    """Mixin over transformers' ``SamVisionLayer`` (scopes ``block`` and ``span``)."""

    def attention_norm(self, tokens: Tensor) -> Tensor:
        """``layer_norm1``."""
        return self.layer_norm1(tokens)

    def merged_mlp(self, tokens: Tensor) -> Tensor:
        """``mlp(layer_norm2(tokens))``."""
        return self.mlp(self.layer_norm2(tokens))

    def forward(self, hidden_states: Tensor) -> Tensor:
        if self.merges(hidden_states):
            refuse_recording("attentions")
            refuse_dropout(self.attn)
        return super().forward(hidden_states)


def _encode(encoder: MergingHFSamEncoder, pixel_values: Tensor | None = None, **kwargs: Any) -> Any:
    """The body of :meth:`MergingHFSamEncoder.forward` (``kwargs``: the output flags, read by the capture)."""
    if pixel_values is None:
        raise ValueError("You have to specify pixel_values")
    firsts = [encoder.layers[run[0]] for run in encoder.tomeplug_runs if len(run) > 1]  # windowed layers
    if any(first.tomeplug_setting.num_to_merge(first.window_size**2) for first in firsts):  # never run alone
        refuse_recording("hidden_states")
        refuse_recording("attentions")
    out, interm = encoder.run_encoder(pixel_values)  # (B, H, W, C)
    output_class = getattr(sys.modules[type(encoder)._tomeplug_base.__module__], encoder.output_class)
    fields = {"intermediate_embeddings": interm} if encoder.returns_interm else {}
    return output_class(last_hidden_state=encoder.neck(out), **fields)


class MergingHFSamEncoder(MergingSamEncoder):
    """Mixin over transformers' ``SamVisionEncoder`` (scope ``span``): runs each span of layers on one plan."""

    output_class: ClassVar[str] = "SamVisionEncoderOutput"

    @property
    def blocks(self) -> nn.ModuleList:
        """The encoder's ``layers``."""
        return self.layers

    def forward(self, pixel_values: Tensor | None = None, **kwargs: Any) -> Any:
        return recording(_encode)(self, pixel_values, **kwargs)


class MergingHFSamHQEncoder(MergingHFSamEncoder):
    """Mixin over transformers' ``SamHQVisionEncoder``: also returns the global layers' outputs, unmerged."""

    output_class = "SamHQVisionEncoderOutput"
    returns_interm = True


class HFSamViTAdapter(SamViTAdapter):
    """transformers' SamModel, SamVisionModel or SamVisionEncoder (SAM ViT-B/L/H)"""

    name = "hf_sam_vit"
    package = "transformers.models.sam.modeling_sam"
    prefix: ClassVar[str] = "Sam"
    """Of the package's class names: ``{prefix}Model``, ``{prefix}VisionEncoder``, ..."""
    encoder_attr = "vision_encoder"
    blocks_attr = "layers"
    encoder_mixin = MergingHFSamEncoder

    @property
    def model_classes(self) -> tuple[str, ...]:
        """The whole model and the vision model, both holding ``vision_encoder``."""
        return f"{self.package}.{self.prefix}Model", f"{self.package}.{self.prefix}VisionModel"

    @property
    def encoder_class(self) -> str:
        """The vision encoder."""
        return f"{self.package}.{self.prefix}VisionEncoder"

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the layer's attention (scope ``attn``) or the layer, naming its attention's parts (``block``,
        ``span``); with any span-scoped layer, also the encoder (its loop runs spans of layers on one plan)."""
        encoder, setting = self._encoder(model), schedule[index]
        layer = encoder.layers[index]
        attention = f"{self.package}.{self.prefix}VisionAttention"
        if attention not in class_paths(layer.attn):
            raise TypeError(f"{self.name} adapter supports {attention} (and its SDPA subclass) only; found "
                            f"{class_path(layer.attn)}")  # fmt: skip
        if setting.scope == "attn":
            swap_class(layer.attn, MergingHFSamAttention)
            layer.attn.tomeplug_setting = setting
        else:
            swap_class(layer.attn, HFSamAttentionNames)
            swap_class(layer, MergingHFSamLayer)
            layer.tomeplug_setting = setting
        patch_encoder_loop(encoder, self.encoder_mixin, schedule)
        register_recording(encoder)


class HFSamHQViTAdapter(HFSamViTAdapter):
    """transformers' SamHQModel, SamHQVisionModel or SamHQVisionEncoder (SAM-HQ ViT-B/L/H)"""

    name = "hf_sam_hq_vit"
    package = "transformers.models.sam_hq.modeling_sam_hq"
    prefix = "SamHQ"
    encoder_mixin = MergingHFSamHQEncoder

"""SAM 3 (Meta's sam3 package): the tracker's memory attention, merged as SAM 2's (target ``"memory_attention"``).

sam3's tracker (``Sam3TrackerBase`` and ``Sam3TrackerPredictor`` from ``build_tracker``; the video model's
``tracker``) conditions each frame's tokens on its memory in ``transformer.encoder``, a
``sam3.model.decoder.TransformerEncoderCrossAttention`` of 4 ``TransformerDecoderLayerv2`` (256 wide, one head,
``sam3.sam.transformer.RoPEAttention`` on a 72 x 72 grid at 1008 px). It computes what SAM 2's ``MemoryAttention``
does: 0.1 x the positions added at its input, batch-first pre-norm layers (self-attention with RoPE, cross-attention
to the memory frames' tokens with RoPE and to the object pointers without, an MLP), a final norm (upstream
applies it after every layer and returns the last one's, the same values as once at the end). So the merging
is :mod:`tomeplug_adapters.sam2_memory_attention`'s, with its scopes (``attn``, ``block``, ``span``), its
positional terms and the option ``memory_r`` (:mod:`tomeplug_adapters.sam2_memory_keys`); this module adapts
what differs:

- the layer's call: upstream's loop passes masks, ``dac`` and ``attn_bias``, which sam3's layer asserts unset;
  here they raise a ValueError when set;
- layers built without cross-attention (``remove_cross_attention_layers``: ``cross_attn_image`` None) run
  self-attention and the MLP only; a span run is cut where cross-attention starts or stops (a run's plan
  carries one cross-attention's rotations);
- the return value: upstream's dict (``memory``, ``pos_embed``, ``padding_mask``), sequence first.

sam3's ``use_rope_real`` rotates with real arithmetic; merged tokens are rotated as complex numbers, the same
rotation (to rounding). ``use_fa3`` (FlashAttention 3, CUDA): merged tokens attend through SDPA, the same
attention. Upstream's activation checkpointing (training only) is not applied by the span loop; outputs are
the same. Not supported, refused when patching: ``cross_attention_first=True``, post-norm layers
(``pre_norm=False``, which upstream does not run either), ``batch_first=False``, ``memory_r`` on a layer
without cross-attention, and span scope or ``memory_r`` with a ``forward`` compiled on the instance (a tracker
built with ``compile_mode``; compile the patched model instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import ClassVar

from torch import Tensor, nn

from tomeplug.adapter import sole_module
from tomeplug.classswap import is_swapped
from tomeplug.setting import Setting
from tomeplug_adapters.sam2_memory_attention import (
    MergingMemoryAttention,
    MergingMemoryAttentionLayer,
    Sam2MemoryAttentionAdapter,
    batch_first_inputs,
)
from tomeplug_adapters.sam2_memory_keys import MergedMemory

__all__ = ["MergingSam3MemoryEncoder", "MergingSam3MemoryLayer", "Sam3MemoryAttentionAdapter"]

ENCODER = "sam3.model.decoder.TransformerEncoderCrossAttention"


def check_unset(where: str, **arguments: object) -> None:
    """Raise a ValueError naming the ``arguments`` that are set (not None or False): sam3 asserts them unset."""
    given = sorted(name for name, value in arguments.items() if value is not None and value is not False)
    if given:
        raise ValueError(f"{where}: {', '.join(given)} not supported (sam3's layers assert them unset); pass None")


class MergingSam3MemoryLayer(MergingMemoryAttentionLayer):
    """Mixin over sam3's ``TransformerDecoderLayerv2`` in the tracker's memory attention: SAM 2's merging layer
    with upstream's call (its unsupported options refused) and upstream's unmerged ``forward_pre``."""

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        dac: bool = False,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        attn_bias: Tensor | None = None,
        num_k_exclude_rope: int = 0,
        tomeplug_memory: MergedMemory | None = None,
    ) -> Tensor:
        """Upstream's arguments (masks, ``dac`` and ``attn_bias`` unset), then as SAM 2's merging layer."""
        check_unset(
            "sam3 memory-attention layer",
            dac=dac,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            attn_bias=attn_bias,
        )
        return super().forward(tgt, memory, pos, query_pos, num_k_exclude_rope, tomeplug_memory)

    def upstream_forward(
        self, tgt: Tensor, memory: Tensor, pos: Tensor | None, query_pos: Tensor | None, nk: int
    ) -> Tensor:
        """Upstream's layer, unmerged (its pre-norm path; the adapter refuses post-norm layers)."""
        return self.forward_pre(tgt, memory, dac=False, pos=pos, query_pos=query_pos, num_k_exclude_rope=nk)


class MergingSam3MemoryEncoder(MergingMemoryAttention):
    """Mixin over sam3's ``TransformerEncoderCrossAttention`` (scope ``span``, option ``memory_r``): SAM 2's
    layer loop (:meth:`~tomeplug_adapters.sam2_memory_attention.MergingMemoryAttention.run_layers`) with
    upstream's call and output."""

    tomeplug_layer_arguments = {"dac": False}  # upstream's loop passes it; its unmerged layers require it

    def forward(
        self,
        src: Tensor | list[Tensor],
        prompt: Tensor,
        src_mask: Tensor | None = None,
        prompt_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | list[Tensor | None] | None = None,
        prompt_key_padding_mask: Tensor | None = None,
        src_pos: Tensor | list[Tensor] | None = None,
        prompt_pos: Tensor | None = None,
        feat_sizes: list | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> dict[str, Tensor | None]:
        """Upstream's arguments: the frame's tokens ``src`` (N, B, C) (or a 1-element list, with
        ``src_key_padding_mask`` and ``src_pos`` lists too), the memory ``prompt`` (T, B, C_mem) and their
        positions; upstream's dict of the output (N, B, C), ``src_pos`` and ``src_key_padding_mask``."""
        if isinstance(src, list):
            lists = (src, src_key_padding_mask, src_pos)
            if not all(isinstance(x, list) and len(x) == 1 for x in lists):
                raise ValueError("memory attention takes one feature level: src, src_key_padding_mask, src_pos lists")
            src, src_key_padding_mask, src_pos = (x[0] for x in lists)
        check_unset(
            "sam3 memory attention",
            src_mask=src_mask,
            prompt_mask=prompt_mask,
            src_key_padding_mask=src_key_padding_mask,
            prompt_key_padding_mask=prompt_key_padding_mask,
        )
        output, memory, pos, memory_pos = batch_first_inputs(self, src, prompt, src_pos, prompt_pos)
        output = self.run_layers(output, memory, memory_pos, pos, num_obj_ptr_tokens)
        normed = self.norm(output).transpose(0, 1)  # batch_first (the adapter refuses others)
        return {"memory": normed, "pos_embed": src_pos, "padding_mask": src_key_padding_mask}


def cross_attention_runs(runs: Sequence[tuple[int, ...]], layers: Sequence[nn.Module]) -> tuple[tuple[int, ...], ...]:
    """``runs`` cut where a layer's cross-attention is present and its predecessor's is not, or the reverse."""
    has_cross = lambda index: layers[index].cross_attn_image is not None  # noqa: E731
    return tuple(tuple(part) for run in runs for _, part in groupby(run, key=has_cross))


def check_layer(layer: nn.Module, index: int, setting: Setting, adapter_name: str) -> None:
    """Raise a ValueError naming what this adapter cannot merge in layer ``index`` and how to avoid it."""
    if not layer.pre_norm:
        raise ValueError(f"{adapter_name}: layer {index} is post-norm (pre_norm=False), which sam3 does not run either")
    if layer.cross_attention_first:
        raise ValueError(
            f"{adapter_name}: layer {index} runs cross-attention before self-attention (cross_attention_first=True); "
            "merging supports the tracker's order only: leave the layer out of layers="
        )
    if layer.cross_attn_image is None and setting.memory_r is not None:
        raise ValueError(
            f"{adapter_name}: layer {index} has no cross-attention (remove_cross_attention_layers), so no memory to "
            "merge: leave it out of the layers that set memory_r"
        )


class Sam3MemoryAttentionAdapter(Sam2MemoryAttentionAdapter):
    """sam3's tracker memory attention (TransformerEncoderCrossAttention), alone or in its tracker or video model"""

    name = "sam3_memory_attention"
    layer_mixin = MergingSam3MemoryLayer
    loop_mixin = MergingSam3MemoryEncoder
    encoder_class: ClassVar[str] = ENCODER
    package: ClassVar[str] = "sam3."
    """The module prefix of the models searched for the memory attention."""

    def memory_attention(self, model: nn.Module) -> nn.Module | None:
        """The ``TransformerEncoderCrossAttention`` itself, or the one in a sam3 model (the tracker's
        ``transformer.encoder``); else None. Raises a ValueError for a model holding more than one."""
        return sole_module(model, self.encoder_class, self.package)

    def matches(self, model: nn.Module) -> bool:
        """True for sam3's ``TransformerEncoderCrossAttention``, or a sam3 model holding exactly one."""
        try:
            return self.memory_attention(model) is not None
        except ValueError:
            return False

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """SAM 2's patch of layer ``index`` (and of the loop), once the layer is checked; span runs cut where
        cross-attention is present in some layers and not in others."""
        module = self.memory_attention(model)
        check_layer(module.layers[index], index, schedule[index], self.name)
        super().patch_block(model, index, schedule)
        if is_swapped(module):
            module.tomeplug_runs = cross_attention_runs(module.tomeplug_runs, module.layers)

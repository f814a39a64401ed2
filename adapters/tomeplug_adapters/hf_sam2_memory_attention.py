"""Hugging Face transformers SAM 2 / SAM 3 trackers: merging in the memory attention (target ``memory_attention``).

transformers' ``Sam2VideoModel`` holds a ``Sam2VideoMemoryAttention``, and ``Sam3TrackerVideoModel`` (alone or
as ``Sam3VideoModel``'s tracker) the same code as ``Sam3TrackerVideoMemoryAttention``: sam2's
``MemoryAttention`` under other names. Its ``layers`` (``Sam2VideoMemoryAttentionLayer``: ``layer_norm1``,
``self_attn``, ``layer_norm2``, ``cross_attn_image``, ``layer_norm3``, the MLP) run on batch-first tokens
with a point-batch axis of 1, (B, 1, N, C); the attentions (``Sam2VideoRoPEAttention``: ``q_proj``,
``k_proj``, ``v_proj``, ``o_proj``, ``num_attention_heads``) take RoPE as a (cos, sin) table that the memory
attention computes once per call from its ``rotary_emb`` and ``position_ids``. transformers fixes what
sam2 configures: the query position is added at the input only (``0.1 * pos``, as ``pos_enc_at_input``),
never inside a layer; the memory keys always carry their positional encoding; every attention rotates
(the object-pointer keys excepted, ``num_k_exclude_rope``); the frame grid is ``memory_attention_rope_feat_sizes``.

The merging math, scopes and ``memory_r`` are sam2's (:mod:`tomeplug_adapters.sam2_memory_attention`,
:mod:`tomeplug_adapters.sam2_memory_keys`), called with transformers' names mapped onto them: the layer's
mixin gives it sam2's names and constant options and reads the (cos, sin) table of its memory attention's
``rotary_emb`` as sam2's complex table (:func:`tomeplug_adapters.hf_sam3_vit.rope_table`); the attentions
get ``num_heads`` and ``out_proj``. A layer that merges nothing runs transformers' own forward (bit for
bit, with the table recomputed exactly as upstream's loop computes it). With a span-scoped layer or
``memory_r`` the memory attention's class is swapped too: its loop runs sam2's runs and memory merge on
transformers' inputs and returns upstream's (1, B, N, C).

Merged attention calls run ``F.scaled_dot_product_attention`` whatever ``attn_implementation`` says (the
eager math, with the same scaling and RoPE dropout); layers that merge nothing run upstream's. transformers'
output capture records nothing of the memory attention (the video models record only mask-decoder
attentions), so there is nothing a merged layer would have to refuse. Not supported: a point batch other
than 1 in a layer's input (transformers' own loop always gives 1), frames whose token count is not the
RoPE table's.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from tomeplug.adapter import class_path, sole_module
from tomeplug.classswap import swap_class
from tomeplug_adapters.hf_sam3_vit import rope_table
from tomeplug_adapters.sam2_memory_attention import (
    MergedMemory,
    MergingMemoryAttention,
    MergingMemoryAttentionLayer,
    Sam2MemoryAttentionAdapter,
)

__all__ = [
    "HFRoPEAttentionNames",
    "HFSam2MemoryAttentionAdapter",
    "HFSam3TrackerMemoryAttentionAdapter",
    "MergingHFMemoryAttention",
    "MergingHFMemoryAttentionLayer",
]

SAM2_VIDEO = "transformers.models.sam2_video.modeling_sam2_video"
SAM3_TRACKER_VIDEO = "transformers.models.sam3_tracker_video.modeling_sam3_tracker_video"


class HFRoPEAttentionNames(nn.Module):
    """Mixin over ``Sam2VideoRoPEAttention``: the names sam2's merged attention reads (forward unchanged)."""

    @property
    def num_heads(self) -> int:
        """``num_attention_heads``."""
        return self.num_attention_heads

    @property
    def out_proj(self) -> nn.Module:
        """The output projection ``o_proj``."""
        return self.o_proj


class MergingHFMemoryAttentionLayer(MergingMemoryAttentionLayer):
    """Mixin over ``Sam2VideoMemoryAttentionLayer``: sam2's merging layer under transformers' names.

    ``tomeplug_memory_attention``: (the memory attention holding the layer,), whose ``rotary_emb`` gives the RoPE
    table (a tuple, so that it is not registered as a submodule).
    """

    pos_enc_at_attn = False  # transformers adds the query position at the input only
    pos_enc_at_cross_attn_queries = False
    pos_enc_at_cross_attn_keys = True
    tomeplug_memory_attention: tuple[nn.Module]

    @property
    def norm1(self) -> nn.Module:
        """``layer_norm1``."""
        return self.layer_norm1

    @property
    def norm2(self) -> nn.Module:
        """``layer_norm2``."""
        return self.layer_norm2

    @property
    def norm3(self) -> nn.Module:
        """``layer_norm3``."""
        return self.layer_norm3

    def rope(self) -> tuple[Tensor, Tensor]:
        """The (cos, sin) table the memory attention hands its layers, computed as its forward computes it."""
        module = self.tomeplug_memory_attention[0]
        return module.rotary_emb(module.position_ids, module.position_ids)

    def rope_tables(self, n: int) -> tuple[Tensor, Tensor]:
        """The memory attention's table as sam2's complex (n, hd / 2) one, for both attentions."""
        rows = self.tomeplug_memory_attention[0].position_ids.shape[0]
        if rows != n:
            raise ValueError(
                f"memory attention got {n} frame tokens, but its RoPE table (memory_attention_rope_feat_sizes) has "
                f"{rows} cells; feed frames of the size the config was built for (image_size)"
            )
        table = rope_table(self.rope(), n)
        return table, table

    def upstream_forward(
        self, tgt: Tensor, memory: Tensor, pos: Tensor | None, query_pos: Tensor | None, nk: int
    ) -> Tensor:
        """transformers' layer, nothing merged, on (B, N, C) tokens (``query_pos`` is always None here)."""
        layer = super(MergingMemoryAttentionLayer, self)
        return layer.forward(tgt[:, None], memory[:, None], pos[:, None], self.rope(), nk)[:, 0]

    def upstream_self_attention(self, tgt: Tensor, query_pos: Tensor | None) -> Tensor:
        """transformers' self-attention branch and residual, nothing merged: (B, N, C) -> (B, N, C)."""
        query = self.layer_norm1(tgt)[:, None]
        attended, _ = self.self_attn(query=query, key=query, value=query, position_embeddings=self.rope())
        return tgt + self.dropout1(attended[:, 0])

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        key_point_embedding: Tensor,
        rope_position_embeddings: tuple[Tensor, Tensor] | None = None,
        num_k_exclude_rope: int = 0,
        tomeplug_memory: MergedMemory | None = None,
    ) -> Tensor:
        """transformers' arguments: (B, 1, N, C) tokens, (B, 1, T, C_mem) memory and its positions -> (B, 1, N, C).
        ``rope_position_embeddings`` is read again from the memory attention (:meth:`rope`: the same table);
        ``tomeplug_memory``: the memory merged once per call by the memory attention's loop."""
        if queries.ndim != 4 or queries.shape[1] != 1:
            raise ValueError(
                f"{class_path(self)} got queries of shape {tuple(queries.shape)}; merging takes transformers' "
                "(batch, 1, tokens, channels), as Sam2VideoMemoryAttention passes them"
            )
        tokens, memory, pos = queries[:, 0], keys[:, 0], key_point_embedding[:, 0]
        return super().forward(tokens, memory, pos, None, num_k_exclude_rope, tomeplug_memory)[:, None]


class MergingHFMemoryAttention(MergingMemoryAttention):
    """Mixin over ``Sam2VideoMemoryAttention`` (scope ``span``, option ``memory_r``): sam2's loop on
    transformers' inputs and outputs."""

    def forward(
        self,
        current_vision_features: Tensor,
        memory: Tensor,
        current_vision_position_embeddings: Tensor | None = None,
        memory_posision_embeddings: Tensor | None = None,
        num_object_pointer_tokens: int = 0,
    ) -> Tensor:
        """transformers' arguments, sequence first ((N, B, C) tokens, (T, B, C_mem) memory) -> (1, B, N, C)."""
        output = current_vision_features
        if current_vision_position_embeddings is not None:
            output = output + 0.1 * current_vision_position_embeddings
        memory, memory_pos = memory.transpose(0, 1), memory_posision_embeddings.transpose(0, 1)
        output = self.run_layers(output.transpose(0, 1), memory, memory_pos, None, num_object_pointer_tokens)
        return self.layer_norm(output[:, None]).transpose(0, 1)

    def rotates_memory(self, layer: nn.Module) -> bool:
        """transformers' cross-attention always rotates the memory keys (the pointers excepted)."""
        return True

    def call_layer(self, layer, output, memory, memory_pos, curr_pos, nk, merged) -> Tensor:
        """One layer called as transformers' loop calls it (merging or not), on (B, N, C) tokens (the arguments
        of :meth:`~tomeplug_adapters.sam2_memory_attention.MergingMemoryAttention.call_layer`)."""
        rope = self.rotary_emb(output, self.position_ids)
        kwds = {} if merged is None else {"tomeplug_memory": merged}
        return layer(output[:, None], memory[:, None], memory_pos[:, None], rope, nk, **kwds)[:, 0]


class HFSam2MemoryAttentionAdapter(Sam2MemoryAttentionAdapter):
    """transformers' Sam2VideoModel or its Sam2VideoMemoryAttention: the frame's tokens"""

    name = "hf_sam2_memory_attention"
    classes: ClassVar[tuple[str, str]] = (f"{SAM2_VIDEO}.Sam2VideoModel", f"{SAM2_VIDEO}.Sam2VideoMemoryAttention")
    packages: ClassVar[str] = "transformers.models.sam2_video"
    """The module-path prefix of the models that may hold one (see :func:`tomeplug.adapter.sole_module`)."""
    layer_mixin = MergingHFMemoryAttentionLayer
    loop_mixin = MergingHFMemoryAttention

    def memory_attention(self, model: nn.Module) -> nn.Module | None:
        """The memory attention itself, or the one a model of :attr:`packages` holds; else None.

        Raises:
            ValueError: the model holds more than one.
        """
        return sole_module(model, self.classes[1], self.packages)

    def matches(self, model: nn.Module) -> bool:
        """True for the memory attention, or a transformers model holding exactly one."""
        try:
            return self.memory_attention(model) is not None
        except ValueError:
            return False

    def prepare_layer(self, module: nn.Module, layer: nn.Module) -> None:
        """Give the layer's attentions sam2's names, and the layer its memory attention (the RoPE table's source)."""
        swap_class(layer.self_attn, HFRoPEAttentionNames)
        swap_class(layer.cross_attn_image, HFRoPEAttentionNames)
        layer.tomeplug_memory_attention = (module,)


class HFSam3TrackerMemoryAttentionAdapter(HFSam2MemoryAttentionAdapter):
    """transformers' Sam3TrackerVideoModel, Sam3VideoModel or Sam3TrackerVideoMemoryAttention: the frame's tokens"""

    name = "hf_sam3_tracker_memory_attention"
    classes: ClassVar[tuple[str, str]] = (
        f"{SAM3_TRACKER_VIDEO}.Sam3TrackerVideoModel",
        f"{SAM3_TRACKER_VIDEO}.Sam3TrackerVideoMemoryAttention",
    )
    packages: ClassVar[str] = "transformers.models.sam3"  # sam3_tracker_video, sam3_video

"""Tiny memory attentions built with sam3's classes (the tracker's ``TransformerEncoderCrossAttention``) and, at the
same sizes and with the same parameter names, with sam2's (``MemoryAttention``): one state dict loads into both.

Sizes: width 32, 2 heads, memory width 16, MLP 64, RoPE tables for an 8 x 8 grid; the positional options of
sam3's ``build_tracker`` (0.1 x the positions at the input, added to the cross-attention's keys only).
"""

from __future__ import annotations

from typing import Any

from tiny_models import _randomise, run_memory_attention
from torch import Tensor, nn

WIDTH, MEMORY_WIDTH = 32, 16
ATTENTION = dict(
    embedding_dim=WIDTH, num_heads=2, downsample_rate=1, dropout=0.1, rope_theta=10000.0, feat_sizes=(8, 8)
)
LAYER = dict(
    activation="relu", d_model=WIDTH, dim_feedforward=64, dropout=0.1, pos_enc_at_attn=False,
    pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
)  # fmt: skip


def tiny_sam3_memory_attention(
    seed: int = 0,
    layers: int = 2,
    removed: tuple[int, ...] = (),
    use_rope_real: bool = False,
    batch_first: bool = True,
    **layer_fields: Any,
) -> nn.Module:
    """sam3's ``TransformerEncoderCrossAttention`` of ``layers`` ``TransformerDecoderLayerv2`` (``removed``: the
    layers built without cross-attention; ``layer_fields`` override the layer's arguments), random weights."""
    from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
    from sam3.sam.transformer import RoPEAttention

    rope = dict(ATTENTION, use_rope_real=use_rope_real)
    layer = TransformerDecoderLayerv2(
        self_attention=RoPEAttention(**rope),
        cross_attention=RoPEAttention(**rope, kv_in_dim=MEMORY_WIDTH, rope_k_repeat=True),
        **{"cross_attention_first": False, "pre_norm": True, **LAYER, **layer_fields},
    )
    encoder = TransformerEncoderCrossAttention(
        d_model=WIDTH, frozen=False, pos_enc_at_input=True, layer=layer, num_layers=layers, batch_first=batch_first,
        remove_cross_attention_layers=list(removed),
    )  # fmt: skip
    return _randomise(encoder, seed)


def tiny_sam2_memory_attention(seed: int = 0, layers: int = 2) -> nn.Module:
    """sam2's ``MemoryAttention`` with the sizes and options of :func:`tiny_sam3_memory_attention`."""
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.sam.transformer import RoPEAttention

    layer = MemoryAttentionLayer(
        self_attention=RoPEAttention(**ATTENTION),
        cross_attention=RoPEAttention(**ATTENTION, kv_in_dim=MEMORY_WIDTH, rope_k_repeat=True),
        **LAYER,
    )
    return _randomise(MemoryAttention(WIDTH, pos_enc_at_input=True, layer=layer, num_layers=layers), seed)


class Sam2Call:
    """A sam3 memory attention called as sam2's (``curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens``),
    returning upstream's ``"memory"`` output (N, B, C)."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.layers = [layer for layer in encoder.layers if layer.cross_attn_image is not None]  # the memory's width

    def __call__(
        self, curr: list, memory: Tensor, curr_pos: list, memory_pos: Tensor, num_obj_ptr_tokens: int
    ) -> Tensor:
        out = self.encoder(
            src=curr, prompt=memory, src_key_padding_mask=[None], src_pos=curr_pos, prompt_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )  # fmt: skip
        return out["memory"]


def run_sam3_memory_attention(encoder: nn.Module, curr: Tensor) -> Tensor:
    """sam3's memory attention on the frame tokens ``curr`` (N, B, 32) and the fixed memory of
    ``tiny_models.run_memory_attention`` (2 memory frames of N tokens, then 4 object-pointer tokens)."""
    return run_memory_attention(Sam2Call(encoder), curr)

"""Tiny transformers SAM 2 / SAM 3 video trackers with a deeper memory attention, and a call of it alone.

``Sam2VideoModel`` is :func:`tiny_hf_sam2.tiny_hf_sam2`'s (memory attention 128 wide, an 8x8 frame grid, memory
64 wide); ``Sam3TrackerVideoModel`` is :func:`tiny_hf_sam3.tiny_hf_sam3_tracker_video`'s (256 wide, a 10x10
grid). Both with ``memory_layers`` memory-attention layers whose weights are random and non-trivial.
"""

from __future__ import annotations

import torch
from tiny_models import _randomise
from torch import nn


def tiny_hf_video(family: str = "sam2", memory_layers: int = 2, seed: int = 0) -> nn.Module:
    """A ``Sam2VideoModel`` (``family="sam2"``) or ``Sam3TrackerVideoModel`` (``"sam3"``), eval mode, sdpa."""
    import transformers as tf

    if family == "sam2":
        from tiny_hf_sam2 import sam2_config

        config = sam2_config(video=True)
        config.memory_attention_num_layers = memory_layers
        model = _randomise(tf.Sam2VideoModel._from_config(config, attn_implementation="sdpa"), seed)
    else:
        from tiny_hf_sam3 import finish, tracker_video_config

        config = tracker_video_config()
        config.memory_attention_num_layers = memory_layers
        torch.manual_seed(seed)
        model = finish(tf.Sam3TrackerVideoModel(config), "sdpa", seed)
        _randomise(model.memory_attention, seed)
    return model


def run_hf_memory_attention(memory_attention: nn.Module, curr: torch.Tensor, pointers: int = 4) -> torch.Tensor:
    """transformers' memory attention on the frame tokens ``curr`` (N, B, C) and a fixed memory as the video model
    builds it: 2 memory frames of N spatial tokens with positions, then ``pointers`` object-pointer tokens."""
    n, b, c = curr.shape
    width = memory_attention.layers[0].cross_attn_image.k_proj.in_features
    generator = torch.Generator().manual_seed(1)
    memory, memory_pos = torch.randn(2, 2 * n + pointers, b, width, generator=generator, dtype=curr.dtype)
    curr_pos = torch.randn(n, b, c, generator=generator, dtype=curr.dtype)
    return memory_attention(
        current_vision_features=curr,
        memory=memory,
        current_vision_position_embeddings=curr_pos,
        memory_posision_embeddings=memory_pos,
        num_object_pointer_tokens=pointers,
    )

"""Tiny transformers SAM 2 models (Sam2Model, Sam2VideoModel) and their processors, built from configs offline.

The Hiera trunk has tiny_models.tiny_hiera's layout (sam2's Hiera: embed 16, heads 1/2/4/8, stages (2, 3, 5, 2),
windows (8, 4, 6, 3), block 8 global, window-position background 4x4) at 128 px: grids 32/16/8/4, so the
same runs of windowed blocks and the same q-pooling blocks (2, 5, 10). The FPN, prompt encoder and mask
decoder are 32 wide; the video model's memory parts too.
"""

from __future__ import annotations

from typing import Any

import torch
from tiny_models import _randomise
from torch import nn

IMAGE_SIZE = 128
HIDDEN = 32  # FPN, prompt encoder and mask decoder width (the video model's: VIDEO_HIDDEN)
VIDEO_HIDDEN = 128  # more than the memory's 64 channels, which transformers fixes (as SAM 2's 256 over 64)
HIERA = dict(
    hidden_size=16,
    embed_dim_per_stage=[16, 32, 64, 128],
    num_attention_heads_per_stage=[1, 2, 4, 8],
    blocks_per_stage=[2, 3, 5, 2],
    window_size_per_stage=[8, 4, 6, 3],
    global_attention_blocks=[8],
    window_positional_embedding_background_size=[4, 4],
    image_size=[IMAGE_SIZE, IMAGE_SIZE],
)


def sam2_config(video: bool = False) -> Any:
    """A ``Sam2Config`` (or ``Sam2VideoConfig``) at the tiny sizes above."""
    import transformers as tf

    hidden = VIDEO_HIDDEN if video else HIDDEN
    vision = tf.Sam2VisionConfig(
        backbone_config=tf.Sam2HieraDetConfig(**HIERA),
        backbone_channel_list=HIERA["embed_dim_per_stage"][::-1],
        backbone_feature_sizes=[[IMAGE_SIZE // s] * 2 for s in (4, 8, 16)],
        fpn_hidden_size=hidden,
    )
    parts = dict(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=hidden, image_size=IMAGE_SIZE, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    if not video:
        return tf.Sam2Config(**parts)
    memory = dict(
        image_size=IMAGE_SIZE,
        num_maskmem=3,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[IMAGE_SIZE // 16] * 2,
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
    )
    return tf.Sam2VideoConfig(**parts, **memory)


def tiny_hf_sam2(attn_implementation: str = "sdpa", video: bool = False, seed: int = 0) -> nn.Module:
    """A ``Sam2Model`` (or ``Sam2VideoModel``) with random non-trivial weights, in eval mode."""
    import transformers as tf

    cls = tf.Sam2VideoModel if video else tf.Sam2Model
    model = cls._from_config(sam2_config(video), attn_implementation=attn_implementation)
    return _randomise(model, seed)


def tiny_hf_hiera(attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """The ``Sam2HieraDetModel`` alone, random non-trivial weights (parameters in sam2's Hiera order)."""
    import transformers as tf

    return _randomise(
        tf.Sam2HieraDetModel._from_config(tf.Sam2HieraDetConfig(**HIERA), attn_implementation=attn_implementation), seed
    )


def sam2_processor(video: bool = False) -> Any:
    """``Sam2Processor`` (or ``Sam2VideoProcessor``) resizing to the tiny models' 128 px."""
    import transformers as tf

    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    images = tf.Sam2ImageProcessor(size=size, mask_size={"height": IMAGE_SIZE // 4, "width": IMAGE_SIZE // 4})
    if not video:
        return tf.Sam2Processor(image_processor=images)
    frames = tf.Sam2VideoVideoProcessor(size=size)
    return tf.Sam2VideoProcessor(image_processor=images, video_processor=frames)


def synthetic_frames(count: int = 3, size: tuple[int, int] = (96, 112)) -> list[torch.Tensor]:
    """``count`` uint8 (H, W, 3) frames of a bright square moving right over a textured background."""
    generator = torch.Generator().manual_seed(0)
    background = torch.randint(0, 80, (*size, 3), generator=generator, dtype=torch.uint8)
    frames = []
    for t in range(count):
        frame = background.clone()
        frame[30:60, 20 + 6 * t : 50 + 6 * t] = torch.tensor([230, 200, 40], dtype=torch.uint8)
        frames.append(frame)
    return frames

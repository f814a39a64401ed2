"""Tiny random-weight SAM 3 models of Hugging Face transformers, built from their own config classes offline."""

from __future__ import annotations

from typing import Any

import torch
from tiny_models import _randomise
from torch import nn

TINY_VIT = dict(
    hidden_size=64, intermediate_size=296, num_hidden_layers=5, num_attention_heads=4, image_size=140, patch_size=14,
    window_size=4, global_attn_indexes=[2, 4], pretrain_image_size=56,
)  # fmt: skip
"""``Sam3ViTConfig`` at tiny_models.tiny_sam3_vit's sizes: 140 px (a 10x10 grid), 4x4 windows padded to 12x12,
global layers 2 and 4 (windowed runs (0, 1) and (3,)), embed 64, 4 heads. SAM 3: 1008 px, 32 layers."""
SIZE = TINY_VIT["image_size"]


def vit_config(attn_implementation: str = "sdpa", **fields: Any):
    """A tiny ``Sam3ViTConfig`` (``fields`` override :data:`TINY_VIT`)."""
    from transformers import Sam3ViTConfig

    config = Sam3ViTConfig(**{**TINY_VIT, **fields})
    config._attn_implementation = attn_implementation
    return config


def tiny_hf_sam3_vit(attn_implementation: str = "sdpa", seed: int = 0, **fields: Any) -> nn.Module:
    """transformers' ``Sam3ViTModel`` at tiny sizes, random non-trivial weights, eval mode."""
    from transformers import Sam3ViTModel

    return _randomise(Sam3ViTModel(vit_config(attn_implementation, **fields)), seed)


def vision_config(attn_implementation: str) -> dict[str, Any]:
    """``Sam3VisionConfig`` arguments: the tiny ViT and a 32-wide FPN at its strides 4, 8, 16 (and 32)."""
    grid = SIZE // TINY_VIT["patch_size"]
    sizes = [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]]
    return dict(backbone_config=vit_config(attn_implementation), fpn_hidden_size=32, backbone_feature_sizes=sizes)


def small(**fields: Any) -> dict[str, Any]:
    """One layer, width 32, 2 heads: a transformer part of SAM 3 at tiny size."""
    return dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64, **fields)


def finish(model: nn.Module, attn_implementation: str, seed: int) -> nn.Module:
    """The model in eval mode with its ViT's weights random and non-trivial, all parts on one attention."""
    model.set_attn_implementation(attn_implementation)
    _randomise(next(m for m in model.modules() if type(m).__name__ == "Sam3ViTModel"), seed)
    return model.eval()


VOCAB_SIZE = 2 + 2 * 256  # start and end of text, every byte alone and ending a word


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` built offline: CLIP's text normalisation and byte-level pre-tokenisation, no merges
    (every byte one token), start/end of text 0 and 1: what ``Sam3Processor`` needs for text prompts."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({piece: len(vocab) + i for i, piece in enumerate(chars + [c + "</w>" for c in chars])})
    assert len(vocab) == VOCAB_SIZE
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_hf_sam3(attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """transformers' ``Sam3Model`` (detector: text and box prompts) at tiny sizes, random weights.

    Its text encoder is a one-layer CLIP text model over :func:`tiny_clip_tokenizer`'s vocabulary.
    """
    from transformers import Sam3Config, Sam3Model

    torch.manual_seed(seed)  # the parts' own initialisation
    config = Sam3Config(
        vision_config=vision_config(attn_implementation),
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=VOCAB_SIZE,
            projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1, max_position_embeddings=32,
        ),
        geometry_encoder_config=small(),
        detr_encoder_config=small(),
        detr_decoder_config=small(num_queries=10),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )  # fmt: skip
    return finish(Sam3Model(config), attn_implementation, seed)


def tiny_hf_sam3_tracker(attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """transformers' ``Sam3TrackerModel`` (point and box prompts, SAM 1 style) at tiny sizes, random weights."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    torch.manual_seed(seed)
    config = Sam3TrackerConfig(
        vision_config=vision_config(attn_implementation),
        prompt_encoder_config=dict(hidden_size=32, image_size=SIZE, patch_size=TINY_VIT["patch_size"]),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32),
    )
    return finish(Sam3TrackerModel(config), attn_implementation, seed)


def tracker_video_config(attn_implementation: str = "sdpa"):
    """A ``Sam3TrackerVideoConfig`` with the tiny ViT (its FPN at the tracker's default width 256, which its memory
    parts need) and one memory-attention layer over the 10x10 grid; other parts at their default sizes."""
    from transformers import Sam3TrackerVideoConfig

    vision = {**vision_config(attn_implementation), "fpn_hidden_size": 256}
    return Sam3TrackerVideoConfig(
        vision_config=vision,
        image_size=SIZE,  # else the config resets the ViT's to 1008
        prompt_encoder_config=dict(image_size=SIZE, patch_size=TINY_VIT["patch_size"]),
        memory_attention_rope_feat_sizes=[SIZE // TINY_VIT["patch_size"]] * 2,
        memory_attention_num_layers=1,
    )


def tiny_hf_sam3_tracker_video(attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """transformers' ``Sam3TrackerVideoModel`` (point prompts propagated through a video) at tiny sizes."""
    from transformers import Sam3TrackerVideoModel

    torch.manual_seed(seed)
    return finish(Sam3TrackerVideoModel(tracker_video_config(attn_implementation)), attn_implementation, seed)


def tiny_hf_sam3_video(attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """transformers' ``Sam3VideoModel``: the tiny detector (:func:`tiny_hf_sam3`) and a tracker without a ViT."""
    from transformers import Sam3VideoConfig, Sam3VideoModel

    torch.manual_seed(seed)
    detector = tiny_hf_sam3(attn_implementation, seed).config
    config = Sam3VideoConfig(detector_config=detector, tracker_config=tracker_video_config(attn_implementation))
    return finish(Sam3VideoModel(config), attn_implementation, seed)

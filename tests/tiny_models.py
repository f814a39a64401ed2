"""Tiny random-initialised models built with the official classes, for fast CPU tests."""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere (SAM zero-initialises relative positions), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def tiny_sam_encoder(
    package: str = "segment_anything",
    img_size: int = 256,
    seed: int = 0,
    depth: int = 4,
    global_attn_indexes: tuple[int, ...] = (1, 3),
) -> nn.Module:
    """SAM ViT encoder: embed 64, 4 heads, depth 4, 16x16 grid, windows of 5 (padded) and 2 global blocks.

    ``depth`` and ``global_attn_indexes`` give an official size's block layout (ViT-L: 24, (5, 11, 17, 23)).
    """
    module = __import__(f"{package}.modeling", fromlist=["ImageEncoderViT"])
    encoder = module.ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=64,
        depth=depth,
        num_heads=4,
        mlp_ratio=4.0,
        out_chans=32,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=5,
        global_attn_indexes=list(global_attn_indexes),
    )
    return _randomise(encoder, seed)


def deep_encoder(package: str = "segment_anything", img_size: int = 256, seed: int = 0) -> nn.Module:
    """tiny_sam_encoder's dimensions at depth 6, global blocks 2 and 5: two runs of two windowed blocks."""
    modeling = __import__(f"{package}.modeling", fromlist=["ImageEncoderViT"])
    encoder = modeling.ImageEncoderViT(
        img_size=img_size, patch_size=16, embed_dim=64, depth=6, num_heads=4, out_chans=32,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=5, global_attn_indexes=[2, 5],
    )  # fmt: skip
    return _randomise(encoder, seed)


def tiny_sam(package: str = "segment_anything", img_size: int = 256, seed: int = 0, **layout) -> nn.Module:
    """A whole ``Sam`` (encoder above, official prompt encoder and mask decoder) at tiny sizes; ``layout``:
    the encoder's ``depth`` and ``global_attn_indexes``."""
    modeling = __import__(f"{package}.modeling", fromlist=["Sam"])
    embed = 32
    grid = img_size // 16
    decoder_cls = modeling.MaskDecoderHQ if package == "segment_anything_hq" else modeling.MaskDecoder
    decoder_kwargs = {"vit_dim": 64} if package == "segment_anything_hq" else {}
    sam = modeling.Sam(
        image_encoder=tiny_sam_encoder(package, img_size, seed, **layout),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=embed, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=8
        ),
        mask_decoder=decoder_cls(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=embed, mlp_dim=64, num_heads=2),
            transformer_dim=embed,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
            **decoder_kwargs,
        ),
    )
    return _randomise(sam, seed)


def tiny_sam2(
    config: str = "sam2.1/sam2.1_hiera_t.yaml",
    target: str | None = None,
    image_size: int = 128,
    seed: int = 0,
    memory_layers: int = 1,
) -> nn.Module:
    """A SAM 2 model from an official yaml at tiny sizes, built without touching hydra's global state.

    Hiera trunk: embed 16, heads 2/4/8/16, stages (1, 2, 3, 2), windows (8, 4, 6, 3), block 5 global.
    At image_size 128 (grids 32/16/8/4) this has every kind of attention call: unpadded windows
    (blocks 0, 2), q-pooling windows (1, 3, and 6 on padded windows), padded windows (4), odd padded
    windows (7) and a global block (5). ``target`` replaces the model class, e.g.
    ``"sam2.sam2_video_predictor.SAM2VideoPredictor"``. Set a ``SAM2ImagePredictor``'s ``_bb_feat_sizes``
    to :func:`sam2_feat_sizes` (it assumes 1024-pixel inputs). ``memory_layers``: the memory attention's
    depth (width 32, an 8x8 frame grid at 128 px; the official models have 4 layers).
    """
    from tomeplug_eval.architectures import instantiate_sam2, tiny_sam2_config

    cfg = tiny_sam2_config(config, image_size)
    cfg.memory_attention.num_layers = memory_layers
    if target is not None:
        cfg._target_ = target
    return _randomise(instantiate_sam2(cfg), seed)


def sam2_feat_sizes(image_size: int = 128) -> list[tuple[int, int]]:
    """The backbone feature sizes (strides 4, 8, 16) a ``SAM2ImagePredictor`` needs for ``image_size``."""
    return [(image_size // s, image_size // s) for s in (4, 8, 16)]


def tiny_hiera(seed: int = 0, **fields) -> nn.Module:
    """sam2's Hiera trunk: embed 16, stages (2, 3, 5, 2), windows (8, 4, 6, 3), block 8 global.

    At image size 128 (grids 32/16/8/4) runs of windowed blocks are (0, 1) and (3, 4) on unpadded windows,
    (6, 7) on padded 6x6 windows over the 8x8 map; 2, 5 and 10 pool queries; 9 and 11 end their stages
    alone. ``fields`` override the constructor's arguments.
    """
    from sam2.modeling.backbones.hieradet import Hiera

    options = dict(embed_dim=16, num_heads=1, stages=(2, 3, 5, 2), window_spec=(8, 4, 6, 3), global_att_blocks=(8,))
    return _randomise(Hiera(window_pos_embed_bkg_spatial_size=(4, 4), **{**options, **fields}), seed)


def tiny_vit(**kwargs) -> nn.Module:
    """VisionTransformer: embed 64, 4 heads, depth 4, 8x8 patch grid, class token and 2 register tokens."""
    from timm.models.vision_transformer import VisionTransformer

    args = dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, class_token=True, reg_tokens=2)
    return _randomise(VisionTransformer(**args, num_classes=0, qk_norm=True, **kwargs), 0)


def tiny_samvit(rope: bool = False) -> nn.Module:
    """VisionTransformerSAM: 8x8 grid, 3x3 windows (padded) in blocks 0 and 2, global blocks 1 and 3."""
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    pos = dict(use_rope=True) if rope else dict(use_rel_pos=True)
    model = VisionTransformerSAM(
        img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, window_size=3,
        global_attn_indexes=(1, 3), neck_chans=32, num_classes=0, **pos,
    )  # fmt: skip
    return _randomise(model, 0)


def tiny_sam3_vit(seed: int = 0, depth: int = 5, global_att_blocks: tuple[int, ...] = (2, 4), **fields) -> nn.Module:
    """sam3's ViT as SAM 3 builds it at tiny sizes (``tomeplug_eval.architectures.TINY_SAM3_VIT``: 140 px, a 10x10
    grid, 4x4 windows padded to 12x12, global blocks 2 and 4, so windowed runs (0, 1) and (3,), LayerScale,
    relative positions in block 1), random non-trivial weights. ``fields`` override the constructor's arguments
    (SAM 3: 32 blocks, global 7, 15, 23, 31)."""
    from tomeplug_eval import architectures

    return _randomise(architectures.tiny_sam3_vit(depth=depth, global_att_blocks=global_att_blocks, **fields), seed)


def tiny_sam3_image(inst_interactive: bool = False, **vit_fields) -> nn.Module:
    """A whole SAM 3 image model from sam3's own builder (``tomeplug_eval.architectures.sam3_image``: random
    weights, no download, CUDA-only builder steps kept on the CPU) with the tiny ViT above (140 px;
    ``vit_fields`` override it) and a one-layer text encoder over a byte-level vocabulary (sam3's wheel ships
    no BPE merges file), both with random non-trivial weights. ``inst_interactive``: with the SAM 1 task
    predictor (point and box prompts through ``model.predict_inst``), its tracker built for 140 px.

    A ``Sam3Processor`` for it takes ``resolution=140``; on a machine without an accelerator its box encoding
    needs ``Tensor.pin_memory`` to be a no-op.
    """
    from tomeplug_eval import architectures

    torch.manual_seed(0)  # the builder's own random initialisation
    size = vit_fields.get("img_size", 140)
    vit = lambda: tiny_sam3_vit(**vit_fields)  # noqa: E731
    return architectures.sam3_image(vit, _tiny_sam3_text_encoder, size, inst_interactive)


def _tiny_sam3_text_encoder(bpe_path: str) -> nn.Module:
    """sam3's text encoder at tiny sizes (``tomeplug_eval.architectures.tiny_sam3_text_encoder``), random weights."""
    from tomeplug_eval import architectures

    return _randomise(architectures.tiny_sam3_text_encoder(bpe_path), 1)


def tiny_sam3_tracker(**vit_fields) -> nn.Module:
    """SAM 3's tracker with its image backbone from sam3's own builder (``tomeplug_eval.architectures.sam3_tracker``)
    with the tiny ViT above (140 px; ``vit_fields`` override it); every other part at the builder's sizes and
    initialisation. Its video inference on the CPU: see that function."""
    from tomeplug_eval import architectures

    torch.manual_seed(0)  # the builder's own random initialisation
    size = vit_fields.get("img_size", 140)
    return architectures.sam3_tracker(lambda: tiny_sam3_vit(**vit_fields), size)


def tiny_sam3_video(**vit_fields) -> nn.Module:
    """SAM 3's video model from sam3's own builder (``tomeplug_eval.architectures.sam3_video``) with the tiny ViT
    and text encoder of :func:`tiny_sam3_image`; every other part at the builder's sizes and initialisation."""
    from tomeplug_eval import architectures

    torch.manual_seed(0)  # the builder's own random initialisation
    size = vit_fields.get("img_size", 140)
    return architectures.sam3_video(lambda: tiny_sam3_vit(**vit_fields), _tiny_sam3_text_encoder, size)


def run_memory_attention(memory_attention: nn.Module, curr: torch.Tensor) -> torch.Tensor:
    """A SAM 2 ``MemoryAttention`` on the frame tokens ``curr`` (N, B, C) and a fixed memory as SAM 2 builds
    it: 2 memory frames of N spatial tokens with positions, then 4 object-pointer tokens (no RoPE)."""
    n, b, c = curr.shape
    width = memory_attention.layers[0].cross_attn_image.k_proj.in_features
    generator = torch.Generator().manual_seed(1)
    memory, memory_pos = torch.randn(2, 2 * n + 4, b, width, generator=generator)
    curr_pos = torch.randn(n, b, c, generator=generator)
    return memory_attention([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=4)


class TinyModel(NamedTuple):
    """How to build a tiny model for an adapter and feed it."""

    builder: str  # "module:function", importable from tests/
    kwargs: dict[str, Any]
    part: str | None  # attribute of the built model to patch and run, e.g. "image_encoder"
    input_shape: tuple[int, ...]
    call: str | None = None  # "module:function" computing the output from (model, input); None: model(input)

    def runner(self) -> Any:
        """The function computing the output from (model, input), or None (``model(input)``)."""
        if self.call is None:
            return None
        module, _, function = self.call.partition(":")
        return getattr(importlib.import_module(module), function)

    def build(self) -> torch.nn.Module:
        """The tiny model (or its ``part``)."""
        module, _, function = self.builder.partition(":")
        build = getattr(importlib.import_module(module), function, None)
        if build is None:
            raise LookupError(f"tests/{module}.py has no {function}(); TINY_MODELS in {__file__} names it")
        model = build(**self.kwargs)
        return getattr(model, self.part) if self.part else model

    def make_input(self) -> torch.Tensor:
        """A random input of the model's shape."""
        return torch.randn(*self.input_shape, generator=torch.Generator().manual_seed(0))


# A tiny model for every registered adapter. An adapter without one fails
# tests/test_adapter_contract.py and test_example_plugin.py's test_used_by_name_on_every_adapter.
TINY_MODELS = {
    "sam_vit": TinyModel("tiny_models:tiny_sam_encoder", {"package": "segment_anything"}, None, (1, 3, 256, 256)),
    "hq_sam_vit": TinyModel("tiny_models:tiny_sam_encoder", {"package": "segment_anything_hq"}, None, (1, 3, 256, 256)),
    "sam2_hiera": TinyModel("tiny_models:tiny_sam2", {}, "image_encoder", (1, 3, 128, 128)),
    "timm_vit": TinyModel("tiny_models:tiny_vit", {}, None, (1, 3, 64, 64)),
    "timm_samvit": TinyModel("tiny_models:tiny_samvit", {}, None, (1, 3, 64, 64)),
    "sam3_vit": TinyModel("tiny_models:tiny_sam3_vit", {}, None, (1, 3, 140, 140)),
    "ultralytics_sam_vit": TinyModel("tiny_ultralytics:tiny_sam_encoder", {}, None, (1, 3, 256, 256)),
    "ultralytics_sam2_hiera": TinyModel("tiny_ultralytics:tiny_sam2", {}, "image_encoder", (1, 3, 128, 128)),
    "ultralytics_sam3_vit": TinyModel("tiny_ultralytics:tiny_sam3_vit", {}, None, (1, 3, 140, 140)),
    "hf_sam_vit": TinyModel("tiny_hf_sam:tiny_hf_sam", {"kind": "sam", "part": "vision"}, None, (1, 3, 128, 128)),
    "hf_sam_hq_vit": TinyModel("tiny_hf_sam:tiny_hf_sam", {"kind": "sam_hq", "part": "vision"}, None, (1, 3, 128, 128)),
    "hf_sam2_hiera": TinyModel("tiny_hf_sam2:tiny_hf_sam2", {}, "vision_encoder", (1, 3, 128, 128)),
    "hf_sam3_vit": TinyModel("tiny_hf_sam3:tiny_hf_sam3_vit", {}, None, (1, 3, 140, 140)),
    "sam2_memory_attention": TinyModel(
        "tiny_models:tiny_sam2",
        {"memory_layers": 2},
        "memory_attention",
        (64, 2, 32),
        call="tiny_models:run_memory_attention",
    ),
    "hf_sam2_memory_attention": TinyModel(  # transformers' memory attention: 2 layers, 128 wide, an 8x8 frame
        "tiny_hf_memory:tiny_hf_video",
        {},
        "memory_attention",
        (64, 2, 128),
        call="tiny_hf_memory:run_hf_memory_attention",
    ),
    "hf_sam3_tracker_memory_attention": TinyModel(  # 256 wide, a 10x10 frame
        "tiny_hf_memory:tiny_hf_video",
        {"family": "sam3"},
        "memory_attention",
        (100, 2, 256),
        call="tiny_hf_memory:run_hf_memory_attention",
    ),
    "ultralytics_sam2_memory_attention": TinyModel(  # Ultralytics' builder: the memory attention at full width
        "tiny_ultralytics:tiny_sam2", {}, "memory_attention", (64, 2, 256), call="tiny_models:run_memory_attention"
    ),
    "sam3_memory_attention": TinyModel(
        "tiny_sam3_memory:tiny_sam3_memory_attention",
        {},
        None,
        (64, 2, 32),
        call="tiny_sam3_memory:run_sam3_memory_attention",
    ),
}

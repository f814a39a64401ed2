"""Hugging Face transformers SAM models: random-initialised from configs, or ``from_pretrained`` a local folder.

The configs are those of the research packages' architectures, so an ``hf_*`` model and its research
counterpart have the same dense FLOPs: SAM / HQ-SAM ViT sizes as ``segment_anything``'s registry builds them,
SAM 2 / 2.1 Hiera trunks read from the official ``sam2`` yamls (embed dim, heads, stages, windows, global
blocks), SAM 3's tracker (``Sam3TrackerModel``: SAM 3's ViT with SAM 2's prompt encoder and mask decoder, the
model behind point and box prompts) at the config's defaults. Tiny variants mirror :mod:`.architectures`'
tiny models dimension for dimension. SAM 2 models also build as ``Sam2VideoModel`` (``video=True``: the video
task), from the same vision config.

Loading is strict: :func:`hf_pretrained` reads ``config.json`` and the weights from a folder (what
``huggingface-cli download facebook/sam-vit-base --local-dir DIR`` leaves), checks the folder's model class and
architecture against the named model, and fails on any missing, unexpected or mis-shaped weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tomeplug.torchvision_compat import ensure_torchvision

from .architectures import sam2_config

HF_SAM_VIT = {
    "b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}
"""SAM's ViT sizes (as ``segment_anything.build_sam``), as ``SamVisionConfig`` fields."""

TINY_HF_SAM_VISION = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, output_channels=32, image_size=256, window_size=7,
    global_attn_indexes=[1, 3], num_pos_feats=16, mlp_dim=256,
)  # fmt: skip
""":func:`.architectures.tiny_sam`'s encoder as a ``SamVisionConfig``."""

TINY_HF_SAM_PROMPTS = dict(hidden_size=32, image_size=256, mask_input_channels=8)
TINY_HF_SAM_DECODER = dict(hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2)


def _transformers() -> Any:
    ensure_torchvision()
    try:
        import transformers
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("hf_* models need transformers: pip install -e '.[hf]'") from error
    return transformers


def default_init(model: nn.Module) -> nn.Module:
    """``model`` with PyTorch's default initialisation in every layer that has one (``reset_parameters``), in eval
    mode. transformers leaves some SAM models' weights at zero when built from a config (they are meant to be
    loaded), which makes every output zero; the research packages' random models are initialised this way."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and not isinstance(module, nn.MultiheadAttention):
            module.reset_parameters()
    return model.eval()


def _with_attention(config: Any, attn_implementation: str) -> Any:
    if attn_implementation not in ("eager", "sdpa"):
        raise ValueError(f"attn_implementation must be 'eager' or 'sdpa', got {attn_implementation!r}")
    config._attn_implementation = attn_implementation
    return config


def hf_sam(size: str = "b", hq: bool = False, attn_implementation: str = "sdpa", tiny: bool = False) -> nn.Module:
    """A random-initialised ``SamModel`` (``hq``: ``SamHQModel``) of SAM's ViT ``size`` (``b``, ``l``, ``h``);
    ``tiny``: :data:`TINY_HF_SAM_VISION` with a small prompt encoder and decoder."""
    tf = _transformers()
    prefix = "SamHQ" if hq else "Sam"
    vision = dict(TINY_HF_SAM_VISION) if tiny else dict(HF_SAM_VIT[size])
    decoder = dict(TINY_HF_SAM_DECODER) if tiny else {}
    if hq:
        decoder["vit_dim"] = vision["hidden_size"]
    config = getattr(tf, f"{prefix}Config")(
        vision_config=vision, prompt_encoder_config=TINY_HF_SAM_PROMPTS if tiny else None, mask_decoder_config=decoder
    )
    return default_init(getattr(tf, f"{prefix}Model")(_with_attention(config, attn_implementation)))


HIERA_DEFAULTS = dict(
    embed_dim=96, num_heads=1, stages=(2, 3, 16, 3), window_spec=(8, 4, 14, 7), global_att_blocks=(12, 16, 20),
    window_pos_embed_bkg_spatial_size=(14, 14),
)  # fmt: skip
"""The defaults of sam2's ``Hiera`` for the fields a yaml may leave out (checked against sam2 by the tests)."""


def hiera_backbone(config: str, image_size: int | None = None) -> dict[str, Any]:
    """The ``Sam2HieraDetConfig`` and ``Sam2VisionConfig`` fields of an official sam2 yaml's trunk and neck."""
    cfg = sam2_config(config, postprocessing=False)
    neck = cfg.image_encoder.neck
    trunk = {key: cfg.image_encoder.trunk.get(key, default) for key, default in HIERA_DEFAULTS.items()}
    embed, heads = int(trunk["embed_dim"]), int(trunk["num_heads"])
    stages = [int(s) for s in trunk["stages"]]
    size = int(image_size or cfg.image_size)
    backbone = dict(
        model_type="sam2_hiera_det_model", hidden_size=embed, num_attention_heads=heads, blocks_per_stage=stages,
        embed_dim_per_stage=[embed * 2**i for i in range(len(stages))],
        num_attention_heads_per_stage=[heads * 2**i for i in range(len(stages))],
        window_size_per_stage=[int(w) for w in trunk["window_spec"]],
        global_attention_blocks=[int(b) for b in trunk["global_att_blocks"]],
        window_positional_embedding_background_size=[int(s) for s in trunk["window_pos_embed_bkg_spatial_size"]],
        image_size=[size, size],
    )  # fmt: skip
    feature_sizes = [[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]]
    channels = [int(c) for c in neck.backbone_channel_list]
    return dict(backbone_config=backbone, backbone_channel_list=channels, backbone_feature_sizes=feature_sizes)


def sam2_video_fields(config: str) -> dict[str, Any]:
    """The ``Sam2VideoConfig`` fields an official sam2 yaml decides: SAM 2.1's occlusion embedding
    (``no_obj_embed_spatial``) and projected temporal encoding of object pointers (``add_tpos_enc_to_obj_ptrs``),
    both off in SAM 2 (as transformers' conversion of the official checkpoints sets them)."""
    cfg = sam2_config(config, postprocessing=False)
    return dict(
        image_size=int(cfg.image_size),
        num_maskmem=int(cfg.num_maskmem),
        enable_occlusion_spatial_embedding=bool(cfg.get("no_obj_embed_spatial", False)),
        enable_temporal_pos_encoding_for_object_pointers=bool(cfg.get("add_tpos_enc_to_obj_ptrs", False)),
    )


def _sam2_model(tf: Any, parts: dict[str, Any], attn_implementation: str, video: dict[str, Any] | None) -> nn.Module:
    """``Sam2Model`` of ``parts`` (vision, prompt encoder, decoder configs), or with ``video`` (the memory's
    ``Sam2VideoConfig`` fields) ``Sam2VideoModel``, random-initialised."""
    if video is None:
        return default_init(tf.Sam2Model(_with_attention(tf.Sam2Config(**parts), attn_implementation)))
    return default_init(tf.Sam2VideoModel(_with_attention(tf.Sam2VideoConfig(**parts, **video), attn_implementation)))


def hf_sam2(
    config: str = "sam2.1/sam2.1_hiera_t.yaml", attn_implementation: str = "sdpa", video: bool = False
) -> nn.Module:
    """A random-initialised ``Sam2Model`` with the Hiera trunk of an official sam2 yaml; ``video``: the
    ``Sam2VideoModel`` of that yaml (the same vision config, transformers' memory defaults, which are SAM 2's)."""
    parts = dict(vision_config=hiera_backbone(config))
    return _sam2_model(_transformers(), parts, attn_implementation, sam2_video_fields(config) if video else None)


TINY_HF_SAM2_VIDEO_HIDDEN = 128
"""The tiny video model's FPN, prompt, decoder and memory width: transformers fixes the memory at 64 channels
and splits wider object pointers into 64-channel tokens (SAM 2: 256 over 64), so it must exceed 64."""


def hf_sam2_tiny(attn_implementation: str = "sdpa", image_size: int = 128, video: bool = False) -> nn.Module:
    """``Sam2Model`` with :func:`.architectures.tiny_sam2_config`'s trunk (embed 16, stages 1-2-3-2, windows
    8-4-6-3, global block 5) and a small neck, prompt encoder and decoder; ``video``: ``Sam2VideoModel`` with
    that trunk, one memory-attention layer and :data:`TINY_HF_SAM2_VIDEO_HIDDEN`-wide parts (so its neck, and
    its encoder FLOPs, differ from the image model's)."""
    vision = hiera_backbone("sam2.1/sam2.1_hiera_t.yaml", image_size)
    vision["backbone_config"].update(
        hidden_size=16, num_attention_heads=2, blocks_per_stage=[1, 2, 3, 2], embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[2, 4, 8, 16], window_size_per_stage=[8, 4, 6, 3], global_attention_blocks=[5],
        window_positional_embedding_background_size=[4, 4],
    )  # fmt: skip
    hidden = TINY_HF_SAM2_VIDEO_HIDDEN if video else 32
    vision.update(backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=hidden)
    parts = dict(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=hidden, image_size=image_size),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    memory = dict(
        image_size=image_size, num_maskmem=3, memory_attention_hidden_size=hidden, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[image_size // 16] * 2,
        memory_encoder_hidden_size=hidden, mask_downsampler_embed_dim=hidden, memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
    )  # fmt: skip
    return _sam2_model(_transformers(), parts, attn_implementation, memory if video else None)


def hf_sam3_tracker(attn_implementation: str = "sdpa", tiny: bool = False) -> nn.Module:
    """A random-initialised ``Sam3TrackerModel`` (SAM 3's ViT at 1008 px; ``tiny``: the ViT sizes of
    :data:`.architectures.TINY_SAM3_VIT` at 140 px, with a small prompt encoder and decoder)."""
    tf = _transformers()
    if not tiny:
        return default_init(tf.Sam3TrackerModel(_with_attention(tf.Sam3TrackerConfig(), attn_implementation)))
    size, grid = 140, 10
    vit = dict(
        hidden_size=64, intermediate_size=296, num_hidden_layers=5, num_attention_heads=4, image_size=size,
        window_size=4, global_attn_indexes=[2, 4], pretrain_image_size=56,
    )  # fmt: skip
    vision = dict(
        backbone_config=dict(model_type="sam3_vit_model", **vit), fpn_hidden_size=32,
        backbone_feature_sizes=[[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
    )  # fmt: skip
    config = tf.Sam3TrackerConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=32, image_size=size),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    return default_init(tf.Sam3TrackerModel(_with_attention(config, attn_implementation)))


class PretrainedFolderError(RuntimeError):
    """A ``from_pretrained`` folder is missing, of another model, or does not load strictly."""


def hf_pretrained(model: nn.Module, folder: str | Path, name: str) -> nn.Module:
    """Load ``folder`` (``config.json`` and weights) as ``model``'s class, strictly, and check that its
    architecture is ``model``'s (the random-initialised model ``name`` builds). Returns the loaded model."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise PretrainedFolderError(
            f"{folder} is not a transformers model folder (no config.json) for model {name!r}: download it with "
            f"`huggingface-cli download <repo> --local-dir {folder}` (e.g. facebook/sam-vit-base) and pass "
            "checkpoint=<that folder>"
        )
    cls = type(model)
    loaded, info = cls.from_pretrained(
        folder, attn_implementation=model.config._attn_implementation, output_loading_info=True
    )
    problems = [f"{key} {sorted(info[key])[:5]}" for key in ("missing_keys", "unexpected_keys") if info.get(key)]
    problems += [f"mismatched shapes {info['mismatched_keys'][:5]}"] if info.get("mismatched_keys") else []
    expected, found = model.state_dict(), loaded.state_dict()
    if expected.keys() != found.keys() or any(expected[k].shape != found[k].shape for k in expected):
        problems.append(f"its architecture is not {name!r}'s (check the folder's config.json)")
    if problems:
        raise PretrainedFolderError(
            f"{folder} does not load strictly as {cls.__name__} ({name}): " + "; ".join(problems)
        )
    return loaded.eval()

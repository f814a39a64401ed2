"""Tiny transformers SAM and SAM-HQ models, built offline from their own config classes, random weights."""

from __future__ import annotations

from functools import partial

from tiny_models import _randomise
from torch import nn

# 128 px, 16 px patches: an 8x8 grid; 3x3 windows (padded to 9x9) in layers 0, 1, 3, 4, global layers 2 and 5,
# so spans run over (0, 1) and (3, 4).
VISION = dict(
    hidden_size=64, output_channels=32, num_hidden_layers=6, num_attention_heads=4, image_size=128, patch_size=16,
    window_size=3, global_attn_indexes=[2, 5], num_pos_feats=16, mlp_dim=128,
)  # fmt: skip
PROMPT = dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8)
DECODER = dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
PREFIXES = {"sam": "Sam", "sam_hq": "SamHQ"}


def tiny_hf_sam(kind: str = "sam", part: str = "model", attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """transformers' ``SamModel`` (``kind="sam"``) or ``SamHQModel`` (``"sam_hq"``), or with ``part="vision"``
    its ``Sam[HQ]VisionModel``, at the sizes above, in eval mode with random non-trivial weights (relative
    positions and absolute positions included, which transformers zero-initialises)."""
    import transformers

    prefix = PREFIXES[kind]
    decoder = {**DECODER, "vit_dim": VISION["hidden_size"]} if kind == "sam_hq" else DECODER
    if part == "vision":
        config = getattr(transformers, f"{prefix}VisionConfig")(**VISION, attn_implementation=attn_implementation)
        model = getattr(transformers, f"{prefix}VisionModel")(config)
    else:
        config = getattr(transformers, f"{prefix}Config")(
            vision_config=VISION, prompt_encoder_config=PROMPT, mask_decoder_config=decoder,
            attn_implementation=attn_implementation,
        )  # fmt: skip
        model = getattr(transformers, f"{prefix}Model")(config)
    return _randomise(model, seed)


def tiny_hf_sam_processor(kind: str = "sam") -> object:
    """The model's own processor (``SamProcessor`` / ``SamHQProcessor``) from ``SamImageProcessor``'s defaults
    scaled to 128 px images and 32 px low-resolution masks (no hub access)."""
    import transformers

    image_processor = transformers.SamImageProcessor(
        size={"longest_edge": 128}, pad_size={"height": 128, "width": 128},
        mask_size={"longest_edge": 32}, mask_pad_size={"height": 32, "width": 32},
    )  # fmt: skip
    return getattr(transformers, f"{PREFIXES[kind]}Processor")(image_processor)


def research_encoder(kind: str = "sam") -> nn.Module:
    """segment_anything's (``"sam"``) or segment_anything_hq's (``"sam_hq"``) ``ImageEncoderViT`` with the
    layout of :data:`VISION` (weights as built: load them with :func:`research_state`)."""
    package = {"sam": "segment_anything", "sam_hq": "segment_anything_hq"}[kind]
    modeling = __import__(f"{package}.modeling", fromlist=["ImageEncoderViT"])
    return modeling.ImageEncoderViT(
        img_size=VISION["image_size"], patch_size=VISION["patch_size"], embed_dim=VISION["hidden_size"],
        depth=VISION["num_hidden_layers"], num_heads=VISION["num_attention_heads"],
        mlp_ratio=VISION["mlp_dim"] / VISION["hidden_size"], out_chans=VISION["output_channels"], qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_abs_pos=True, use_rel_pos=True,
        window_size=VISION["window_size"], global_attn_indexes=VISION["global_attn_indexes"],
    ).eval()  # fmt: skip


# transformers' vision encoder names -> segment_anything's ImageEncoderViT names
_NAMES = (
    ("patch_embed.projection.", "patch_embed.proj."), ("neck.conv1.", "neck.0."), ("neck.layer_norm1.", "neck.1."),
    ("neck.conv2.", "neck.2."), ("neck.layer_norm2.", "neck.3."), ("layers.", "blocks."),
    (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."),
)  # fmt: skip


def research_state(encoder: nn.Module) -> dict:
    """A transformers vision encoder's ``state_dict`` under segment_anything's ``ImageEncoderViT`` names."""
    state = {}
    for key, value in encoder.state_dict().items():
        for old, new in _NAMES:
            key = key.replace(old, new)
        state[key] = value
    return state

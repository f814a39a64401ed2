"""Random-initialised official architectures, built from the packages' own registries (SAM, HQ-SAM), yamls (SAM 2)
and builder (SAM 3: :func:`sam3_image`, offline and without CUDA).

SAM 2 models are built from the yaml files shipped in the ``sam2`` package with ``OmegaConf.load`` and
``hydra.utils.instantiate``: never through ``hydra.compose``, which needs the global hydra state that
``import sam2`` initialises (and that the harness owns while it runs). Nothing here touches that state.
Nothing here knows model names or checkpoints: that is :mod:`.model_catalog`.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from tomeplug.torchvision_compat import ensure_torchvision

# What the official ``build_sam2`` adds for image prediction (``apply_postprocessing=True``).
SAM2_POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


def registry_model(package: str, name: str) -> nn.Module:
    """The random-initialised model of ``package``'s ``sam_model_registry[name]`` (SAM or HQ-SAM)."""
    ensure_torchvision()
    module = __import__(package, fromlist=["sam_model_registry"])
    return module.sam_model_registry[name](checkpoint=None)


def tiny_sam(
    package: str = "segment_anything", depth: int = 4, global_attn_indexes: tuple[int, ...] = (1, 3)
) -> nn.Module:
    """A small official ``Sam`` (or HQ-SAM): ViT encoder embed 64, depth 4, windows of 7, 256x256 input.

    ``depth`` and ``global_attn_indexes`` give an official size's block layout (ViT-L: 24, (5, 11, 17, 23)), so
    its published schedule applies."""
    ensure_torchvision()
    modeling = __import__(f"{package}.modeling", fromlist=["Sam"])
    hq = package == "segment_anything_hq"
    encoder = modeling.ImageEncoderViT(
        img_size=256, embed_dim=64, depth=depth, num_heads=4, out_chans=32, use_rel_pos=True,
        window_size=7, global_attn_indexes=list(global_attn_indexes),
    )  # fmt: skip
    decoder = (modeling.MaskDecoderHQ if hq else modeling.MaskDecoder)(
        transformer_dim=32,
        transformer=modeling.TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
        **({"vit_dim": 64} if hq else {}),
    )
    prompts = modeling.PromptEncoder(
        embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=8
    )
    return modeling.Sam(image_encoder=encoder, prompt_encoder=prompts, mask_decoder=decoder)


def sam2_config_path(config: str) -> Path:
    """The path of a yaml under the installed ``sam2`` package's ``configs/``, found without importing sam2."""
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("SAM 2 models need the sam2 package: pip install -e '.[sam2]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "configs" / config
    if not path.is_file():
        raise FileNotFoundError(f"SAM 2 config {config!r} not found in the installed sam2 package ({path})")
    return path


def sam2_config(config: str, postprocessing: bool = True) -> Any:
    """The ``model`` node of a SAM 2 yaml (e.g. ``sam2.1/sam2.1_hiera_l.yaml``) as an OmegaConf config."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(sam2_config_path(config)).model
    if postprocessing:
        cfg.sam_mask_decoder_extra_args = dict(SAM2_POSTPROCESSING)
    return cfg


def instantiate_sam2(cfg: Any) -> nn.Module:
    """Instantiate a SAM 2 model config (recursively, as the official builder does)."""
    from hydra.utils import instantiate

    ensure_torchvision()
    return instantiate(cfg, _recursive_=True)


def _override(cfg: Any, target: str | None, fields: dict[str, Any]) -> Any:
    if target is not None:
        cfg._target_ = target  # e.g. "sam2.sam2_video_predictor.SAM2VideoPredictor"
    cfg.update(fields)
    return cfg


def sam2_model(config: str, target: str | None = None, **fields: Any) -> nn.Module:
    """A random-initialised SAM 2 / 2.1 model from its official yaml, with image post-processing on.

    ``target`` replaces the model class (the video predictor); ``fields`` set more of the model's options.
    """
    return instantiate_sam2(_override(sam2_config(config), target, fields))


def tiny_sam2_config(config: str = "sam2.1/sam2.1_hiera_t.yaml", image_size: int = 128) -> Any:
    """An official SAM 2 yaml shrunk for tests: Hiera embed 16, stages (1, 2, 3, 2), windows (8, 4, 6, 3).

    Block 5 is global. At image size 128 (grids 32/16/8/4) it has every kind of attention call: unpadded,
    padded and odd windows, q-pooling stage transitions and a global block.
    """
    cfg = sam2_config(config, postprocessing=False)
    feat, mem = [image_size // 16] * 2, 16
    cfg.image_size = image_size
    cfg.compile_image_encoder = False
    trunk = cfg.image_encoder.trunk
    trunk.update(embed_dim=16, num_heads=2, stages=[1, 2, 3, 2], global_att_blocks=[5], window_spec=[8, 4, 6, 3])
    trunk.window_pos_embed_bkg_spatial_size = [4, 4]
    neck = cfg.image_encoder.neck
    neck.update(d_model=32, backbone_channel_list=[128, 64, 32, 16])
    neck.position_encoding.num_pos_feats = 32
    attention = cfg.memory_attention
    attention.update(d_model=32, num_layers=1)
    attention.layer.update(d_model=32, dim_feedforward=64)
    attention.layer.self_attention.update(embedding_dim=32, feat_sizes=feat, num_heads=1)
    attention.layer.cross_attention.update(embedding_dim=32, feat_sizes=feat, num_heads=1, kv_in_dim=mem)
    encoder = cfg.memory_encoder
    encoder.update(out_dim=mem, in_dim=32)
    encoder.position_encoding.num_pos_feats = mem
    encoder.mask_downsampler.embed_dim = 32
    encoder.fuser.layer.dim = 32
    return cfg


def tiny_sam2(image_size: int = 128, target: str | None = None, **fields: Any) -> nn.Module:
    """A small official SAM 2.1 model (see :func:`tiny_sam2_config`), image post-processing on."""
    cfg = tiny_sam2_config(image_size=image_size)
    cfg.sam_mask_decoder_extra_args = dict(SAM2_POSTPROCESSING)
    return instantiate_sam2(_override(cfg, target, fields))


# SAM 3: sam3's own builder (``sam3.model_builder.build_sam3_image_model``), offline and on any device.
TINY_SAM3_VIT = dict(
    img_size=140, pretrain_img_size=56, patch_size=14, embed_dim=64, depth=5, num_heads=4, mlp_ratio=4.625,
    use_abs_pos=True, tile_abs_pos=True, global_att_blocks=(2, 4), rel_pos_blocks=(1,), use_rope=True,
    use_interp_rope=True, window_size=4, retain_cls_token=False, ln_pre=True, bias_patch_embed=False,
    init_values=0.5,
)  # fmt: skip
"""sam3 ``ViT`` arguments as SAM 3 builds it (patch 14, interpolated RoPE, tiled abs-pos, ln_pre, no patch-embed
bias, LayerScale) at tiny sizes: embed 64, 4 heads, 140 px (a 10x10 grid), 4x4 windows (padded to 12x12),
global blocks 2 and 4, relative positions in block 1. SAM 3 itself: 1008 px, embed 1024, 32 blocks."""

SAM3_BPE = "bpe_simple_vocab_16e6.txt.gz"  # the tokenizer's merges; in sam3's repository, not in its wheel


def tiny_sam3_vit(**fields: Any) -> nn.Module:
    """sam3's ``ViT`` with :data:`TINY_SAM3_VIT`'s arguments (``fields`` override them), its own initialisation."""
    from sam3.model.vitdet import ViT

    return ViT(**{**TINY_SAM3_VIT, **fields})


def sam3_image_vit() -> nn.Module:
    """SAM 3's image ViT as sam3's builder builds it (1008 px, 32 blocks, width 1024), random weights."""
    from sam3.model_builder import _create_vit_backbone

    return _create_vit_backbone()


def init_text_embeddings(encoder: nn.Module) -> nn.Module:
    """Initialise what sam3's text transformer leaves as ``torch.empty`` until a checkpoint loads (CLIP's init:
    positional embedding std 0.01, projection std width^-0.5), so random-weight models are reproducible."""
    for name, parameter in encoder.named_parameters():
        if name.endswith("positional_embedding"):
            nn.init.normal_(parameter, std=0.01)
        elif name.endswith("text_projection"):
            nn.init.normal_(parameter, std=parameter.shape[0] ** -0.5)
    return encoder


def tiny_sam3_text_encoder(bpe_path: str) -> nn.Module:
    """sam3's ``VETextEncoder`` at tiny sizes (width 64, 2 heads, one layer), vocabulary from ``bpe_path``."""
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer

    tokenizer = SimpleTokenizer(bpe_path=bpe_path)
    return init_text_embeddings(
        VETextEncoder(tokenizer=tokenizer, d_model=256, width=64, heads=2, layers=1, vocab_size=tokenizer.vocab_size)
    )


def sam3_bpe_path() -> str:
    """sam3's BPE merges file where its builder looks for it; else a byte-level stand-in (no merges) written to
    the temp folder: the model builds, box and point prompts are unaffected, text prompts tokenise per byte."""
    import gzip
    import tempfile

    spec = importlib.util.find_spec("sam3")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("SAM 3 models need the sam3 package: pip install -e '.[sam3]'")
    official = Path(next(iter(spec.submodule_search_locations))).parent / "assets" / SAM3_BPE
    if official.is_file():
        return str(official)
    stand_in = Path(tempfile.gettempdir()) / "tomeplug_byte_level_bpe.txt.gz"
    if not stand_in.is_file():
        stand_in.write_bytes(gzip.compress(b"#version: byte-level only, no merges\n"))
    return str(stand_in)


@contextlib.contextmanager
def sam3_offline(
    vit: Callable[[], nn.Module] | None = None,
    text_encoder: Callable[[str], nn.Module] | None = None,
    image_size: int = 1008,
) -> Iterator[Any]:
    """``sam3.model_builder`` set up to build offline on the CPU for ``image_size`` inputs (yielded while active).

    ``vit`` and ``text_encoder`` (from a BPE path) replace the builder's (1008 px, 32 blocks; 24 layers, width
    1024). Two builder steps put tensors on CUDA; they run on the CPU here and are recomputed on the model's
    device at first use: the sine position encodings' caches (precomputed for 1008 px) and the detector
    decoder's coordinate cache (:func:`sam3_image` clears it). The tracker is built for ``image_size`` and its
    mask memory for the ViT's grid (upstream interpolates masks to 16 cells per feature cell: 1152 px at 1008).
    """
    from unittest import mock

    import sam3.model_builder as builder
    from sam3.model.decoder import TransformerDecoder
    from sam3.model.memory import SimpleMaskDownSampler
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
    from sam3.model.sam3_video_inference import Sam3VideoInference

    ensure_torchvision()
    position_init, coords = PositionEmbeddingSine.__init__, TransformerDecoder._get_coords
    downsampler_init = SimpleMaskDownSampler.__init__
    size, mask_size = image_size, 16 * (image_size // 14)

    def position_lazily(self, *args, precompute_resolution=None, **kwargs):
        position_init(self, *args, precompute_resolution=None, **kwargs)

    def at_size(cls: type) -> Any:
        """``cls`` built for ``image_size`` whatever the builder passes."""
        init = cls.__init__
        return mock.patch.object(cls, "__init__", lambda self, *a, **kw: init(self, *a, **{**kw, "image_size": size}))

    def memory_at_size(self, *args, interpol_size=None, **kwargs):
        downsampler_init(self, *args, interpol_size=interpol_size and [mask_size, mask_size], **kwargs)

    official_text = builder._create_text_encoder
    text = text_encoder or (lambda bpe: init_text_embeddings(official_text(bpe)))
    parts = [
        mock.patch.object(builder, "_create_text_encoder", text),
        mock.patch.object(PositionEmbeddingSine, "__init__", position_lazily),
        mock.patch.object(TransformerDecoder, "_get_coords", staticmethod(lambda h, w, device: coords(h, w, "cpu"))),
        at_size(Sam3TrackerPredictor),
        at_size(Sam3VideoInference),
        mock.patch.object(SimpleMaskDownSampler, "__init__", memory_at_size),
    ]
    if vit is not None:
        parts.append(mock.patch.object(builder, "_create_vit_backbone", lambda compile_mode=None: vit()))
    with contextlib.ExitStack() as stack:
        for part in parts:
            stack.enter_context(part)
        yield builder


def sam3_image(
    vit: Callable[[], nn.Module] | None = None,
    text_encoder: Callable[[str], nn.Module] | None = None,
    image_size: int = 1008,
    inst_interactive: bool = True,
) -> nn.Module:
    """SAM 3's image model from sam3's ``build_sam3_image_model``: random weights, nothing downloaded, on the CPU.

    Args:
        vit: builds the ViT instead of the builder's (1008 px, 32 blocks); ``image_size`` must be its ``img_size``.
        text_encoder: builds the text encoder from a BPE path instead of the builder's (24 layers, width 1024).
        image_size: the input side; the tracker behind ``predict_inst`` is built for it.
        inst_interactive: with the SAM 1 task predictor (point and box prompts through ``model.predict_inst``).

    CUDA-only builder steps run on the CPU (:func:`sam3_offline`). A ``Sam3Processor`` for it takes
    ``resolution=image_size``; on a machine without an accelerator its box encoding needs ``Tensor.pin_memory``
    to be a no-op.
    """
    with sam3_offline(vit, text_encoder, image_size) as builder:
        model = builder.build_sam3_image_model(
            bpe_path=sam3_bpe_path(), device="cpu", load_from_HF=False, enable_inst_interactivity=inst_interactive
        )
    model.transformer.decoder.compilable_cord_cache = None  # recomputed on the boxes' device at first use
    if inst_interactive:
        grid = image_size // 14
        model.inst_interactive_predictor._bb_feat_sizes = [(grid * 4, grid * 4), (grid * 2, grid * 2), (grid, grid)]
    return model.eval()


def sam3_tracker(vit: Callable[[], nn.Module] | None = None, image_size: int = 1008) -> nn.Module:
    """SAM 3's tracker with its own image backbone (sam3's ``build_tracker(with_backbone=True)``, the
    ``Sam3TrackerPredictor`` of point, box and mask prompts on videos): random weights, on the CPU.

    ``vit`` builds the ViT instead of the builder's; ``image_size`` must be its ``img_size``. On a machine without
    an accelerator, sam3's video inference needs ``Tensor.cuda`` and ``Tensor.pin_memory`` to be no-ops and its
    state offloaded (``init_state(..., offload_video_to_cpu=True, offload_state_to_cpu=True)``).
    """
    with sam3_offline(vit, image_size=image_size) as builder:
        return builder.build_tracker(apply_temporal_disambiguation=True, with_backbone=True).eval()


def sam3_video(
    vit: Callable[[], nn.Module] | None = None,
    text_encoder: Callable[[str], nn.Module] | None = None,
    image_size: int = 1008,
) -> nn.Module:
    """SAM 3's video model from sam3's ``build_sam3_video_model`` (the detector, whose backbone holds the one ViT,
    and the tracker without a backbone): random weights, nothing downloaded, on the CPU.

    ``vit``, ``text_encoder`` and ``image_size`` as in :func:`sam3_image`. On a machine without an accelerator its
    inference needs what :func:`sam3_tracker`'s does, with the tracker's states offloaded
    (``Sam3TrackerPredictor.init_state(..., offload_state_to_cpu=True)``) and, as sam3 runs it in bf16 autocast on
    CUDA, CPU bf16 autocast around ``add_prompt`` and ``propagate_in_video``.
    """
    with sam3_offline(vit, text_encoder, image_size) as builder:
        model = builder.build_sam3_video_model(bpe_path=sam3_bpe_path(), load_from_HF=False, device="cpu")
    model.detector.transformer.decoder.compilable_cord_cache = None  # recomputed on the boxes' device at first use
    return model.eval()


def tiny_sam3(inst_interactive: bool = True, **vit_fields: Any) -> nn.Module:
    """SAM 3's image model (:func:`sam3_image`) with the tiny ViT (``vit_fields`` override
    :data:`TINY_SAM3_VIT`) and a tiny text encoder; every other part at the builder's sizes."""
    size = vit_fields.get("img_size", TINY_SAM3_VIT["img_size"])
    return sam3_image(lambda: tiny_sam3_vit(**vit_fields), tiny_sam3_text_encoder, size, inst_interactive)

"""Random-initialised official architectures, built from the packages' own registries (SAM, HQ-SAM) and yamls (SAM 2).

SAM 2 models are built from the yaml files shipped in the ``sam2`` package with ``OmegaConf.load`` and
``hydra.utils.instantiate``: never through ``hydra.compose``, which needs the global hydra state that
``import sam2`` initialises (and that the harness owns while it runs). Nothing here touches that state.
Nothing here knows model names or checkpoints: that is :mod:`.model_catalog`.
"""

from __future__ import annotations

import importlib.util
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


def tiny_sam(package: str = "segment_anything") -> nn.Module:
    """A small official ``Sam`` (or HQ-SAM): ViT encoder embed 64, depth 4, windows of 7, 256x256 input."""
    ensure_torchvision()
    modeling = __import__(f"{package}.modeling", fromlist=["Sam"])
    hq = package == "segment_anything_hq"
    encoder = modeling.ImageEncoderViT(
        img_size=256, embed_dim=64, depth=4, num_heads=4, out_chans=32, use_rel_pos=True,
        window_size=7, global_attn_indexes=[1, 3],
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

"""Model builders: official architectures, random-initialised or loaded strictly from official checkpoints.

A model is one entry in :data:`MODELS`: a builder that returns the random-initialised official model,
and the official checkpoint's file name. Checkpoints live in :data:`CHECKPOINT_DIR` (``checkpoints/``
under the working directory, or ``$TOMEPLUG_CHECKPOINT_DIR``), e.g. ``checkpoints/sam_vit_b_01ec64.pth``.
Loading is strict: a missing, unreadable or mismatched file is an error that names the file and the fix.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from tomeplug.torchvision_compat import ensure_torchvision

CHECKPOINT_DIR = Path(os.environ.get("TOMEPLUG_CHECKPOINT_DIR", "checkpoints"))
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or does not fit the model."""


class RandomWeightsWarning(UserWarning):
    """A model was built without a checkpoint: FLOPs and timings are real, its outputs are not."""


def _registry_builder(package: str, name: str) -> nn.Module:
    """The random-initialised model of ``package``'s ``sam_model_registry[name]``."""
    ensure_torchvision()
    module = __import__(package, fromlist=["sam_model_registry"])
    return module.sam_model_registry[name](checkpoint=None)


def _tiny_sam() -> nn.Module:
    """A small official ``Sam`` for tests and smoke runs: ViT encoder embed 64, depth 4, 256x256 input."""
    ensure_torchvision()
    from segment_anything import modeling

    encoder = modeling.ImageEncoderViT(
        img_size=256, embed_dim=64, depth=4, num_heads=4, out_chans=32, use_rel_pos=True,
        window_size=7, global_attn_indexes=[1, 3],
    )  # fmt: skip
    decoder = modeling.MaskDecoder(
        transformer_dim=32, transformer=modeling.TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2)
    )
    prompts = modeling.PromptEncoder(
        embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=8
    )
    return modeling.Sam(image_encoder=encoder, prompt_encoder=prompts, mask_decoder=decoder)


@attrs.frozen
class ModelSpec:
    """One buildable model.

    Args:
        build: returns the random-initialised model.
        checkpoint: the official checkpoint's file name, or None where there is none.
        url: where to download it from.
        state_dict_key: the key holding the state dict inside the checkpoint (SAM 2 uses ``"model"``).
    """

    build: Callable[[], nn.Module]
    checkpoint: str | None = None
    url: str | None = None
    state_dict_key: str | None = None


MODELS: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(partial(_registry_builder, "segment_anything", "vit_b"), "sam_vit_b_01ec64.pth", SAM_URL),
    "vit_l": ModelSpec(partial(_registry_builder, "segment_anything", "vit_l"), "sam_vit_l_0b3195.pth", SAM_URL),
    "vit_h": ModelSpec(partial(_registry_builder, "segment_anything", "vit_h"), "sam_vit_h_4b8939.pth", SAM_URL),
    "tiny": ModelSpec(_tiny_sam),
}


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def default_checkpoint(name: str) -> Path | None:
    """Where the official checkpoint of ``name`` is expected (it may not exist), or None if it has none."""
    spec = _spec(name)
    return CHECKPOINT_DIR / spec.checkpoint if spec.checkpoint else None


def _download_hint(name: str) -> str:
    spec, path = _spec(name), default_checkpoint(name)
    if spec.checkpoint is None:
        return f"model {name!r} has no official checkpoint; pass checkpoint=None"
    return f"download {spec.url}{spec.checkpoint} to {path} (or pass checkpoint=None for random weights)"


def state_dict_problems(expected: dict[str, Any], found: dict[str, Any], limit: int = 5) -> list[str]:
    """Why ``found`` does not load strictly where ``expected`` does: missing/unexpected keys, shapes."""
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    problems = [f"{len(missing)} missing keys {missing[:limit]}"] if missing else []
    problems += [f"{len(unexpected)} unexpected keys {unexpected[:limit]}"] if unexpected else []
    for key in sorted(expected.keys() & found.keys()):
        shape = tuple(getattr(found[key], "shape", ()))
        if shape != tuple(expected[key].shape) and len(problems) < 2 + limit:
            problems.append(f"shape of {key}: file {shape}, model {tuple(expected[key].shape)}")
    return problems


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    """Load ``path`` into ``model`` strictly; errors name the file, the problem and the fix."""
    path, spec = Path(path), _spec(name)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} for model {name!r} not found: {_download_hint(name)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {str(error).splitlines()[0]}); the file is "
            f"truncated, corrupt or not a PyTorch state dict: {_download_hint(name)}"
        ) from error
    if spec.state_dict_key is not None and isinstance(state, dict) and spec.state_dict_key in state:
        state = state[spec.state_dict_key]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        hint = f" (the official file for {name!r} is {spec.checkpoint})" if spec.checkpoint else ""
        raise CheckpointError(f"checkpoint {path} does not fit model {name!r}{hint}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def build_model(name: str, checkpoint: str | Path | None = None) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) in eval mode.

    Args:
        name: ``vit_b``, ``vit_l``, ``vit_h`` (SAM) or ``tiny`` (a small SAM for tests).
        checkpoint: a checkpoint path, loaded strictly; None gives random weights, with a
            :class:`RandomWeightsWarning`.
    """
    model = _spec(name).build()
    if checkpoint is None:
        warnings.warn(
            f"model {name!r} has RANDOM WEIGHTS (no checkpoint given): FLOPs and timings are real, its outputs "
            f"are meaningless. {_download_hint(name)}.",
            RandomWeightsWarning,
            stacklevel=2,
        )
    else:
        load_checkpoint(model, checkpoint, name)
    return model.eval()

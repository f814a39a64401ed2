"""The catalogue of official models: names, families, official checkpoints; building a model with its weights.

A model is one entry in :data:`MODELS`: a builder of its random-initialised architecture
(:mod:`.architectures`), its family, and the official checkpoint's file name and URL. Checkpoints live in
:data:`CHECKPOINT_DIR` (``checkpoints/`` under the working directory, or ``$TOMEPLUG_CHECKPOINT_DIR``), e.g.
``checkpoints/sam_vit_b_01ec64.pth``. Loading is strict: a missing, unreadable or mismatched file is an error
that names the file and the fix.

Names: ``sam_vit_{b,l,h}`` (SAM), ``hq_sam_vit_{b,l,h}`` (HQ-SAM), ``sam2_hiera_{t,s,b+,l}`` (SAM 2),
``sam2.1_hiera_{t,s,b+,l}`` (SAM 2.1), ``sam3`` (SAM 3's image model with its SAM 1 task predictor, 1008 px),
and the tiny test models ``sam_tiny``, ``hq_sam_tiny``, ``sam2_tiny``, ``sam3_tiny`` (official classes, small
dimensions, no checkpoint). ``vit_b``, ``vit_l``, ``vit_h`` and ``tiny`` are aliases.

Hugging Face transformers models (:mod:`.hf_architectures`): ``hf_sam_vit_{b,l,h}``, ``hf_sam_hq_vit_{b,l,h}``,
``hf_sam2_hiera_{t,s,b+,l}``, ``hf_sam2.1_hiera_{t,s,b+,l}``, ``hf_sam3`` (``Sam3TrackerModel``) and the tiny
``hf_sam_tiny``, ``hf_sam_hq_tiny``, ``hf_sam2_tiny``, ``hf_sam3_tiny``. Their checkpoint is a
``from_pretrained`` folder (``config.json`` and weights), e.g. ``checkpoints/sam-vit-base`` from
``huggingface-cli download facebook/sam-vit-base --local-dir checkpoints/sam-vit-base``.

Ultralytics models (:mod:`.ultralytics_architectures`): ``ultralytics_sam_vit_{b,l,h}``,
``ultralytics_sam2_hiera_{t,s,b+,l}``, ``ultralytics_sam2.1_hiera_{t,s,b+,l}`` and the tiny ``ultralytics_sam_tiny``,
``ultralytics_sam2_tiny``; checkpoints are Ultralytics' files (``sam_b.pt``, ``sam2.1_t.pt``, ...).
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

from .architectures import registry_model, sam2_model, sam3_image, tiny_sam, tiny_sam2, tiny_sam3
from .hf_architectures import hf_pretrained, hf_sam, hf_sam2, hf_sam2_tiny, hf_sam3_tracker
from .ultralytics_architectures import ultralytics_sam, ultralytics_sam2_tiny, ultralytics_sam_tiny

CHECKPOINT_DIR = Path(os.environ.get("TOMEPLUG_CHECKPOINT_DIR", "checkpoints"))
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or does not fit the model."""


class RandomWeightsWarning(UserWarning):
    """A model was built without a checkpoint: FLOPs and timings are real, its outputs are not."""


SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
SAM21_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
HQ_URL = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
HF_HUB = "https://huggingface.co/"
ULTRALYTICS_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0/"
SAM3_URL = "https://huggingface.co/facebook/sam3/resolve/main/"  # a gated repository: accept its licence first


def sam3_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """The image model's state dict from ``sam3.pt`` (keys as sam3's own loader maps them): ``detector.*``
    without the prefix, ``tracker.*`` under ``inst_interactive_predictor.model.``; other keys stay as they are
    (and fail the strict check)."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("detector."):
            key = key.removeprefix("detector.")
        elif key.startswith("tracker."):
            key = "inst_interactive_predictor.model." + key.removeprefix("tracker.")
        renamed[key] = value
    return renamed


@attrs.frozen
class ModelSpec:
    """One buildable model.

    Args:
        build: returns the random-initialised model (SAM 2 builders take options: see :func:`build_model`).
        family: ``"sam"``, ``"hq_sam"``, ``"sam2"`` or ``"sam3"``: how images are encoded and prompts decoded.
        checkpoint: the official checkpoint's file name, or None where there is none.
        url: where to download it from.
        state_dict_key: the key holding the state dict inside the checkpoint (SAM 2 uses ``"model"``).
        source: where the architecture comes from (a registry entry or a yaml), for records and checks.
        rename: maps the checkpoint's state dict (after ``state_dict_key``) to the model's keys, or None.
        pretrained_folder: the checkpoint is a transformers ``from_pretrained`` folder named ``checkpoint``
            (the hub repository ``url`` + ``checkpoint`` under its owner), not a file.
    """

    build: Callable[..., nn.Module]
    family: str = "sam"
    checkpoint: str | None = None
    url: str | None = None
    state_dict_key: str | None = None
    source: str = ""
    rename: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    pretrained_folder: bool = False


def _hf(build: Callable[..., nn.Module], family: str, repo: str | None, source: str) -> ModelSpec:
    owner, _, folder = repo.partition("/") if repo else ("", "", None)
    return ModelSpec(
        build, family, folder, f"{HF_HUB}{owner}/" if repo else None, source=source, pretrained_folder=True
    )


def _sam(package: str, family: str, size: str, checkpoint: str, url: str) -> ModelSpec:
    return ModelSpec(partial(registry_model, package, size), family, checkpoint, url, None, f"{package}:{size}")


def _sam2(version: str, size: str, checkpoint: str) -> ModelSpec:
    prefix = "sam2" if version == "2" else "sam2.1"
    config = f"{prefix}/{prefix}_hiera_{size}.yaml"
    url = SAM2_URL if version == "2" else SAM21_URL
    return ModelSpec(partial(sam2_model, config), "sam2", f"{prefix}_hiera_{checkpoint}.pt", url, "model", config)


_SAM_FILES = {"b": "sam_vit_b_01ec64.pth", "l": "sam_vit_l_0b3195.pth", "h": "sam_vit_h_4b8939.pth"}
_hq_file = "sam_hq_vit_{}.pth".format
_HIERA = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}
MODELS: dict[str, ModelSpec] = {
    **{f"sam_vit_{s}": _sam("segment_anything", "sam", f"vit_{s}", f, SAM_URL) for s, f in _SAM_FILES.items()},
    **{f"hq_sam_vit_{s}": _sam("segment_anything_hq", "hq_sam", f"vit_{s}", _hq_file(s), HQ_URL) for s in "blh"},
    **{f"sam2_hiera_{s}": _sam2("2", s, f) for s, f in _HIERA.items()},
    **{f"sam2.1_hiera_{s}": _sam2("2.1", s, f) for s, f in _HIERA.items()},
    "sam_tiny": ModelSpec(tiny_sam, "sam", source="segment_anything, tiny dims"),
    "hq_sam_tiny": ModelSpec(partial(tiny_sam, "segment_anything_hq"), "hq_sam", source="segment_anything_hq, tiny"),
    "sam2_tiny": ModelSpec(tiny_sam2, "sam2", state_dict_key="model", source="sam2.1/sam2.1_hiera_t.yaml, tiny"),
    "sam3": ModelSpec(sam3_image, "sam3", "sam3.pt", SAM3_URL, "model", "sam3 build_sam3_image_model", sam3_state_dict),
    "sam3_tiny": ModelSpec(
        tiny_sam3, "sam3", None, None, "model", "sam3 builder, tiny ViT and text encoder", sam3_state_dict
    ),  # files in sam3.pt's layout
}
_HF_SAM = {"b": "base", "l": "large", "h": "huge"}
_HF_HIERA = {"t": "tiny", "s": "small", "b+": "base-plus", "l": "large"}
MODELS.update(
    {
        **{
            f"hf_sam_vit_{s}": _hf(partial(hf_sam, s), "hf_sam", f"facebook/sam-vit-{n}", f"SamModel vit_{s}")
            for s, n in _HF_SAM.items()
        },
        **{
            f"hf_sam_hq_vit_{s}": _hf(
                partial(hf_sam, s, True), "hf_sam_hq", f"syscv-community/sam-hq-vit-{n}", f"SamHQModel vit_{s}"
            )
            for s, n in _HF_SAM.items()
        },
        **{
            f"hf_{v}_hiera_{s}": _hf(
                partial(hf_sam2, f"{v}/{v}_hiera_{s}.yaml"),
                "hf_sam2",
                f"facebook/{v}-hiera-{n}",
                f"Sam2Model from {v}/{v}_hiera_{s}.yaml",
            )
            for v in ("sam2", "sam2.1")
            for s, n in _HF_HIERA.items()
        },
        "hf_sam3": _hf(hf_sam3_tracker, "hf_sam3", "facebook/sam3", "Sam3TrackerModel, config defaults"),
        "hf_sam_tiny": _hf(partial(hf_sam, tiny=True), "hf_sam", None, "SamModel, sam_tiny's dims"),
        "hf_sam_hq_tiny": _hf(partial(hf_sam, hq=True, tiny=True), "hf_sam_hq", None, "SamHQModel, sam_tiny's dims"),
        "hf_sam2_tiny": _hf(hf_sam2_tiny, "hf_sam2", None, "Sam2Model, sam2_tiny's trunk"),
        "hf_sam3_tiny": _hf(partial(hf_sam3_tracker, tiny=True), "hf_sam3", None, "Sam3TrackerModel, sam3_tiny's ViT"),
    }
)
_UL_HIERA = {"t": "t", "s": "s", "b+": "b", "l": "l"}
MODELS.update(
    {
        **{
            f"ultralytics_sam_vit_{s}": ModelSpec(
                partial(ultralytics_sam, f"sam_vit_{s}"), "ultralytics_sam", f"sam_{s}.pt", ULTRALYTICS_URL,
                "model", f"ultralytics build_sam_vit_{s}",
            )
            for s in "blh"
        },
        **{
            f"ultralytics_{v}_hiera_{s}": ModelSpec(
                partial(ultralytics_sam, f"sam2_{u}"), "ultralytics_sam2", f"{v}_{u}.pt", ULTRALYTICS_URL, "model",
                f"ultralytics build_sam2_{u}",
            )
            for v in ("sam2", "sam2.1") for s, u in _UL_HIERA.items()
        },
        "ultralytics_sam_tiny": ModelSpec(ultralytics_sam_tiny, "ultralytics_sam", state_dict_key="model"),
        "ultralytics_sam2_tiny": ModelSpec(ultralytics_sam2_tiny, "ultralytics_sam2", state_dict_key="model"),
    }
)  # fmt: skip
ALIASES: dict[str, str] = {"vit_b": "sam_vit_b", "vit_l": "sam_vit_l", "vit_h": "sam_vit_h", "tiny": "sam_tiny"}


def canonical_name(name: str) -> str:
    """The :data:`MODELS` key of ``name`` (aliases such as ``vit_l`` resolved); an error lists the known."""
    key = ALIASES.get(name, name)
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return key


def default_checkpoint(name: str) -> Path | None:
    """Where the official checkpoint of ``name`` is expected (it may not exist), or None if it has none."""
    spec = MODELS[canonical_name(name)]
    return CHECKPOINT_DIR / spec.checkpoint if spec.checkpoint else None


def _download_hint(name: str) -> str:
    spec, path = MODELS[canonical_name(name)], default_checkpoint(name)
    random = "random weights: checkpoint=None (harness: checkpoint=random)"
    if spec.checkpoint is None:
        return f"model {name!r} has no official checkpoint; use {random}"
    if spec.pretrained_folder:
        repo = spec.url.removeprefix(HF_HUB) + spec.checkpoint
        return f"download it with `huggingface-cli download {repo} --local-dir {path}` (or use {random})"
    return f"download {spec.url}{spec.checkpoint} to {path} (or use {random})"


def resolve_checkpoint(name: str, checkpoint: str | Path | None) -> Path | None:
    """The checkpoint file to load for model ``name``, or None for random weights.

    ``"auto"``: the official file in :data:`CHECKPOINT_DIR` if it is there, else random weights.
    ``None``, ``"random"`` or ``"none"``: random weights. A folder: the official file name inside it
    (handy in sweeps over models). Any other value is the file itself (it must exist). For transformers
    models (``hf_*``) the checkpoint is a ``from_pretrained`` folder: the given folder, or the official
    folder name inside it.
    """
    if checkpoint is None or str(checkpoint).lower() in ("random", "none", "null"):
        return None
    spec = MODELS[canonical_name(name)]
    if str(checkpoint) == "auto":
        path = default_checkpoint(name)
        return path if path is not None and path.exists() else None
    path = Path(checkpoint).expanduser()
    if spec.pretrained_folder:
        inside = path / spec.checkpoint if spec.checkpoint else None
        return inside if inside is not None and (inside / "config.json").is_file() else path
    if path.is_dir():
        if spec.checkpoint is None:
            raise FileNotFoundError(f"checkpoint folder {path} given, but model {name!r} has no official file")
        return path / spec.checkpoint
    return path


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


def require_checkpoint(path: str | Path, name: str) -> Path:
    """``path`` as a Path if it is a file (a folder for ``hf_*`` models); else an error naming it and where to
    download the official file."""
    path = Path(path)
    if not (path.is_dir() if MODELS[canonical_name(name)].pretrained_folder else path.is_file()):
        raise FileNotFoundError(f"checkpoint {path} for model {name!r} not found: {_download_hint(name)}")
    return path


def load_checkpoint(model: nn.Module, path: str | Path, name: str) -> None:
    """Load ``path`` into ``model`` strictly; errors name the file, the problem and the fix."""
    path, spec = require_checkpoint(path, name), MODELS[canonical_name(name)]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        lines = str(error).splitlines()  # may be none: torch.load of a 0-byte file raises a bare EOFError
        why = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        if path.stat().st_size == 0:
            why = "0 bytes: an empty file"
        raise CheckpointError(
            f"cannot read checkpoint {path} ({why}); the file is truncated, corrupt or not a PyTorch state dict: "
            f"{_download_hint(name)}"
        ) from error
    if spec.state_dict_key is not None and isinstance(state, dict) and spec.state_dict_key in state:
        state = state[spec.state_dict_key]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    if spec.rename is not None:
        state = spec.rename(state)
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        hint = f" (the official file for {name!r} is {spec.checkpoint})" if spec.checkpoint else ""
        raise CheckpointError(f"checkpoint {path} does not fit model {name!r}{hint}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def build_model(name: str, checkpoint: str | Path | None = None, **options: Any) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) in eval mode.

    Args:
        name: a key of :data:`MODELS` or an alias (``vit_l``, ``tiny``).
        checkpoint: a checkpoint path, loaded strictly; None gives random weights, with a
            :class:`RandomWeightsWarning`.
        options: builder options; SAM 2 models take ``target`` (another model class, e.g.
            ``"sam2.sam2_video_predictor.SAM2VideoPredictor"``) and model fields such as ``fill_hole_area=8``;
            transformers models take ``attn_implementation`` (``"sdpa"``, the default, or ``"eager"``), and
            ``hf_sam2*`` models ``video=True`` (``Sam2VideoModel`` instead of ``Sam2Model``).
    """
    spec = MODELS[canonical_name(name)]
    model = spec.build(**options)
    if spec.pretrained_folder and checkpoint is not None:
        return hf_pretrained(model, require_checkpoint(checkpoint, name), name)
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

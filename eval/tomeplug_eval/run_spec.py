"""One harness job's identity, resolved from its hydra config: what to patch, and the keys of its caches.

``strategy.name`` is ``none`` (the unmerged baseline), ``mix`` (``layers`` is a ``{block: strategy}``
mapping) or a registered strategy; the strategy node's other non-null keys are that strategy's parameters,
``r`` (when not null) applies to every merged block. The run key hashes everything that changes the
numbers (model, weights, strategy, schedule, data, protocol, precision, device type, batch size, limit,
the merging code and the plugins it uses, :mod:`.code_identity`) and the item set: the identity of every
item the run reads (:meth:`~.data.item.IndexedDataset.identity`), so a finished run is recognised and a
run over other items, or with other merging code, is not. Per-item results are keyed without ``limit`` or
the item set (each cached item carries its own identity, so a larger limit reuses the finished items), and
the reference outputs also without the strategy, the schedule and the merging code: every strategy of a
sweep shares the unmerged model's outputs, stored per item identity.

``memory_layers`` (``task: video``, SAM 2 models, research or transformers') selects SAM 2's memory-attention
layers that merge (``tomeplug.patch(..., target="memory_attention")``) with the syntax and the strategy and
parameters of ``layers``; ``[]`` (the default) merges none, and ``layers=[]`` then leaves the encoder unmerged.

Bad configuration fails here or in :meth:`RunSpec.check`, before any item is computed: :func:`resolve`
checks the scalar options (``dtype``, ``batch_size``, ``limit``, ...), ``check`` patches the built model
and unpatches it at once, which raises every error ``tomeplug.patch`` would (strategy or plugin name,
parameters, the ``r`` cap, ``layers`` against the model's depth, the preset, the scope).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

import tomeplug

from . import code_identity
from .model_catalog import MODELS, canonical_name, require_checkpoint, resolve_checkpoint
from .schedule_file import FILE_PREFIX, read_schedule

BASELINE, MIX = "none", "mix"
MEMORY_TARGET = "memory_attention"
MEMORY_FAMILIES = ("sam2", "hf_sam2")  # model families whose video runs have a memory attention to merge
DTYPES: dict[str, str] = {
    **dict.fromkeys(("float32", "fp32", "f32"), "float32"),
    **dict.fromkeys(("bfloat16", "bf16"), "bfloat16"),
    **dict.fromkeys(("float16", "fp16", "half"), "float16"),
}
"""Accepted ``dtype`` names and the torch dtype each stands for."""


def plain(value: Any) -> Any:
    """An OmegaConf node (or anything) as plain JSON-able Python: dicts, lists, scalars."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _layers(value: Any) -> Any:
    value = plain(value)
    if isinstance(value, str) and value.startswith(FILE_PREFIX):  # layers=@schedule.json (tomeplug_eval.tune)
        return read_schedule(value.removeprefix(FILE_PREFIX))
    if isinstance(value, Mapping):
        return {int(k): v for k, v in value.items()}
    if isinstance(value, str) and value.lower() in ("all", "null", "none"):
        return None
    return value


def digest(data: Any) -> str:
    """A short stable hash of JSON-able data."""
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def item_set_digest(item_keys: Sequence[str]) -> str:
    """The fingerprint of the items a run covers: a hash of every item's key, in index order."""
    return digest(list(item_keys))


def canonical_dtype(name: Any) -> str:
    """The torch dtype name of a ``dtype`` option (``bf16`` -> ``bfloat16``); an error lists the valid names."""
    key = str(name).lower()
    if key not in DTYPES:
        raise ValueError(f"dtype={name!r} is not a precision; choose one of {', '.join(DTYPES)}")
    return DTYPES[key]


def _count(cfg: Any, key: str, least: int, optional: bool = False) -> None:
    value = cfg[key]
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        none = " (or null)" if optional else ""
        raise ValueError(f"{key}={value!r} is invalid: it must be an integer >= {least}{none}")


def check_options(cfg: Any) -> None:
    """Check the harness's scalar options; an error names the key, the value and what it must be."""
    _count(cfg, "batch_size", 1)
    _count(cfg, "limit", 1, optional=True)
    _count(cfg, "warmup", 0)
    _count(cfg, "speed_rounds", 0)
    timeout = cfg.dist_timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"dist_timeout_s={timeout!r} is invalid: it must be a number of seconds > 0")


def weights_identity(path: Path | None, seed: int) -> str:
    """``random:<seed>``, or the checkpoint's absolute path with its size and modification time (of every
    file in it, for a ``from_pretrained`` folder)."""
    if path is None:
        return f"random:{seed}"
    if not path.is_dir():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()]
    return f"{path.resolve()}:{sum(s for s, _ in stats)}:{max((m for _, m in stats), default=0)}:{len(stats)} files"


@attrs.frozen
class RunPatch:
    """The patches of one job: the encoder's (None with ``layers=[]``) and the memory attention's (or None)."""

    encoder: tomeplug.PatchHandle | None
    memory: tomeplug.PatchHandle | None = None

    def to_dict(self) -> dict[str, Any]:
        """The encoder handle's ``to_dict()`` (``layers`` empty when unmerged), with the memory attention's
        under ``memory_attention`` when it is patched."""
        encoder = {"layers": {}} if self.encoder is None else self.encoder.to_dict()
        return encoder if self.memory is None else {**encoder, MEMORY_TARGET: self.memory.to_dict()}

    def remove(self) -> None:
        """Unpatch both."""
        for handle in (self.memory, self.encoder):
            if handle is not None:
                handle.remove()


@attrs.frozen
class RunSpec:
    """The resolved identity of one job (see the module docstring)."""

    model: str
    checkpoint: Path | None
    strategy: str
    params: dict[str, Any]
    layers: Any
    reference_key: str
    items_key: str
    config_key: str
    merging_code: dict[str, Any] | None
    dtype: str = "float32"
    memory_layers: Any = attrs.field(factory=list)

    def run_key(self, item_set: str) -> str:
        """The key of this job over the items fingerprinted by ``item_set`` (:func:`item_set_digest`)."""
        return digest({"config": self.config_key, "items": item_set})

    @property
    def baseline(self) -> bool:
        """Whether this is the unmerged model (``strategy=none``)."""
        return self.strategy == BASELINE

    @property
    def weights(self) -> str:
        """``"random"`` or ``"checkpoint"``, as recorded in the results."""
        return "random" if self.checkpoint is None else "checkpoint"

    def patch(self, model: nn.Module) -> RunPatch | None:
        """Patch ``model`` with this job's schedules, the encoder's and the memory attention's (baseline: None)."""
        if self.baseline:
            return None
        strategy = None if self.strategy == MIX else self.strategy
        encoder_params = {k: v for k, v in self.params.items() if k != "memory_r"}  # memory attention's alone
        encoder = None if self.layers == [] else tomeplug.patch(model, strategy, self.layers, **encoder_params)
        if self.memory_layers == []:
            return RunPatch(encoder)
        try:
            memory = tomeplug.patch(model, strategy, self.memory_layers, target=MEMORY_TARGET, **self.params)
        except BaseException:
            if encoder is not None:
                encoder.remove()
            raise
        return RunPatch(encoder, memory)

    def check(self, model: nn.Module) -> None:
        """Patch the unpatched ``model`` and unpatch it at once: a bad schedule fails before any item runs."""
        if self.patch(model) is not None:
            tomeplug.unpatch(model)


def resolve(cfg: Any, device_type: str) -> RunSpec:
    """The :class:`RunSpec` of a composed harness config run on ``device_type`` (checkpoints must exist)."""
    check_options(cfg)
    dtype = canonical_dtype(cfg.dtype)
    model = canonical_name(cfg.model.name)
    checkpoint = resolve_checkpoint(model, cfg.checkpoint)
    if checkpoint is not None:
        require_checkpoint(checkpoint, model)
    if OmegaConf.is_missing(cfg.strategy, "name"):  # strategy=plugin without strategy.name (plugin.yaml)
        raise ValueError(
            "strategy=plugin needs the strategy's name: add strategy.name=NAME (e.g. strategy=plugin "
            "strategy.name=pool2x2); `python -m tomeplug list` shows the registered names"
        )
    strategy_node = dict(plain(cfg.strategy))
    strategy = str(strategy_node.pop("name"))
    params = {k: v for k, v in strategy_node.items() if v is not None}
    layers, memory_layers = _layers(cfg.layers), _layers(cfg.get("memory_layers", []))
    if strategy == BASELINE:
        params, layers, memory_layers = {}, None, []
    else:
        if cfg.r is not None:
            params["r"] = cfg.r
        for key, value in (("layers", layers), ("memory_layers", memory_layers)):
            if value != [] and (strategy == MIX) != isinstance(value, Mapping):
                raise ValueError(
                    f"strategy=mix takes its strategies from a {{block: strategy}} mapping in {key}, e.g. "
                    f"strategy=mix '{key}={{0:tome,1:pitome}}'; a mapping in {key} needs strategy=mix"
                )
        _check_memory_layers(memory_layers, layers, model, str(cfg.dataset.task))
    dataset = plain(cfg.dataset)
    data_root = None if cfg.data_root is None else str(Path(cfg.data_root).expanduser().resolve())
    shared = {
        "model": model,
        "model_options": {k: v for k, v in plain(cfg.model).items() if k != "name"},
        "weights": weights_identity(checkpoint, cfg.seed),
        "dataset": dataset,
        "data_root": data_root,
        "keep_aspect": cfg.keep_aspect,
        "dtype": dtype,
        "device": device_type,
        "batch_size": cfg.batch_size,
    }
    code = None if strategy == BASELINE else code_identity.merging_identity(strategy, layers, MIX)
    if isinstance(memory_layers, Mapping):  # the memory attention's mix may use other plugins
        code["plugins"].update(code_identity.merging_identity(strategy, memory_layers, MIX)["plugins"])
    items = {**shared, "strategy": strategy, "params": params, "layers": layers, "merging_code": code}
    if memory_layers != []:  # keys of runs without memory merging stay as they were
        items["memory_layers"] = memory_layers
    config_key = digest({**items, "limit": cfg.limit})
    keys = (digest(shared), digest(items), config_key)
    return RunSpec(model, checkpoint, strategy, params, layers, *keys, code, dtype=dtype, memory_layers=memory_layers)


def _check_memory_layers(memory_layers: Any, layers: Any, model: str, task: str) -> None:
    """An error unless memory-attention merging is off or asked of a research SAM 2 model on a video task,
    and unless the run merges something."""
    if memory_layers == []:
        if layers == []:
            raise ValueError("layers=[] and memory_layers=[] merge nothing: use strategy=none for the unmerged model")
        return
    if task != "video" or MODELS[model].family not in MEMORY_FAMILIES:
        raise ValueError(
            f"memory_layers={memory_layers!r} merges SAM 2's memory attention, which runs on video datasets with "
            f"a SAM 2 model, research or transformers' (e.g. model=sam2.1_hiera_t dataset=davis, or model=sam2_tiny "
            f"or hf_sam2_tiny dataset=synthetic_video); got model={model} on a {task!r} task. Leave memory_layers=[] "
            "here"
        )

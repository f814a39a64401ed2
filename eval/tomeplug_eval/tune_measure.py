"""Measuring one schedule against the unmerged model: encoder FLOPs, fidelity, and (on request) time.

The unmerged model's outputs on the calibration images are computed once and kept; a schedule's
measurement patches the model, runs the probe, unpatches it and compares. Fidelity loss, the quantity the
search minimises, is ``(1 - mask IoU) + (1 - embedding cosine)`` (means over prompts and images), or
``1 - embedding cosine`` alone where the model's decoder is unknown: 0 for the unmerged model, at most 2.

Measurements of FLOPs and fidelity are deterministic for a given model, images and merging code, so they
are cached: in memory, and in ``cache_dir`` when one is given (one JSON file per schedule, keyed by the
model's weights, the probe's images and prompts, the schedule and the merging code), which makes an
interrupted search resume where it stopped. Times are never cached: they belong to the moment.

FLOPs are counted with fvcore (:mod:`.flops`), by tracing the patched encoder once per single-block
schedule. At scopes ``attn`` and ``block`` a merged block unmerges before the next one, so each block's
FLOPs depend on its own setting only, and a schedule's FLOPs are the dense count less each of its blocks'
savings counted alone (exact integers; ``tests/test_tune.py`` checks it against a trace of the whole
schedule). A schedule with ``span`` blocks, which keep tokens merged across blocks, is traced whole.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

import tomeplug

from . import code_identity
from .flops import count_flops
from .metrics import embedding_cosine, mask_iou
from .results import atomic_write, read_json
from .run_spec import digest
from .speed_check import interleaved_speed
from .tune_probe import Probe, ProbeOutput

INDEPENDENT_SCOPES = ("attn", "block")
"""Scopes at which a merged block hands the next block as many tokens as it got: blocks' FLOPs add up."""
Schedule = dict[int, dict[str, Any]]
"""``{block: {"strategy": name, **params}}``: what ``tomeplug.patch(model, layers=schedule)`` takes."""


@attrs.frozen
class Measurement:
    """One schedule on the calibration images.

    Attributes:
        gflops: encoder GFLOPs of one image (fvcore, one multiply-add = one flop).
        flops_ratio: that over the unmerged encoder's.
        emb_cos: mean cosine of the image embeddings with the unmerged model's.
        mask_iou: mean IoU of the prompts' masks with the unmerged model's; None without a known decoder.
    """

    gflops: float
    flops_ratio: float
    emb_cos: float
    mask_iou: float | None

    @property
    def loss(self) -> float:
        """Fidelity loss (see the module docstring): 0 is the unmerged model."""
        return (1.0 - self.emb_cos) + (0.0 if self.mask_iou is None else 1.0 - self.mask_iou)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record, the loss included."""
        return {**attrs.asdict(self), "loss": self.loss}


def weights_digest(model: nn.Module) -> str:
    """A hash of the model's class and state dict (every tensor's bytes): the cache's model key."""
    sha = hashlib.sha1(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        sha.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        sha.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:16]


def compare_outputs(outputs: list[ProbeOutput], reference: list[ProbeOutput]) -> tuple[float, float | None]:
    """Mean embedding cosine and mean mask IoU (None without masks) of ``outputs`` against ``reference``."""
    pairs = list(zip(outputs, reference, strict=True))
    cos = [float(embedding_cosine(o.embedding[None], r.embedding[None])[0]) for o, r in pairs]
    if reference[0].masks is None:
        return math.fsum(cos) / len(cos), None
    ious = [mask_iou(m, n) for o, r in pairs for m, n in zip(o.masks, r.masks, strict=True)]
    return math.fsum(cos) / len(cos), math.fsum(ious) / len(ious)


def schedule_key(schedule: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A schedule as JSON-able data with string block keys, sorted."""
    return {str(block): dict(schedule[block]) for block in sorted(schedule)}


class Measurer:
    """Measures schedules on one model and probe (see the module docstring).

    Args:
        model: the model to patch (unpatched; it is left unpatched after every measurement).
        probe: what to run on the calibration images (:func:`~.tune_probe.make_probe`).
        cache_dir: where measurements are kept between runs; None: in memory only.
    """

    def __init__(self, model: nn.Module, probe: Probe, cache_dir: str | Path | None = None) -> None:
        if tomeplug.active_patch(model) is not None:
            raise ValueError("tune needs the unpatched model: call tomeplug.unpatch(model) first")
        self.model, self.probe = model, probe
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._memory: dict[str, Measurement] = {}
        self._reference: list[ProbeOutput] | None = None
        self._flops_cache: dict[str, int] = {}
        self._identity: dict[str, Any] | None = None
        self.computed = 0
        """How many measurements were computed (not found in a cache): a resumed search computes fewer."""

    def identity(self) -> dict[str, Any]:
        """What every measurement of this measurer depends on besides the schedule."""
        if self._identity is None:
            self._identity = {
                "model": weights_digest(self.model),
                "probe": self.probe.fingerprint(),
                "code": code_identity.merging_code_digest(),
            }
        return self._identity

    def reference(self) -> list[ProbeOutput]:
        """The unmerged model's outputs, computed once."""
        if self._reference is None:
            self._reference = self.probe.run()
        return self._reference

    def dense_gflops(self) -> float:
        """The unmerged encoder's GFLOPs per image."""
        return self._flops({}) / 1e9

    def _flops(self, schedule: Schedule) -> int:
        """The encoder's multiply-adds per image under ``schedule`` (see the module docstring)."""
        key = json.dumps(schedule_key(schedule), sort_keys=True)
        if key not in self._flops_cache:
            if len(schedule) > 1 and all(s.get("scope", "attn") in INDEPENDENT_SCOPES for s in schedule.values()):
                dense = self._flops({})
                saved = [dense - self._flops({block: setting}) for block, setting in schedule.items()]
                self._flops_cache[key] = dense - sum(saved)
            elif schedule:
                with tomeplug.patch(self.model, None, layers=schedule):
                    self._flops_cache[key] = count_flops(self.probe.encoder, self.probe.flops_input()).total
            else:
                self._flops_cache[key] = count_flops(self.probe.encoder, self.probe.flops_input()).total
        return self._flops_cache[key]

    def measure(self, schedule: Schedule) -> Measurement:
        """FLOPs and fidelity of ``schedule`` (empty: the unmerged model), from a cache when there."""
        if not schedule:
            dense = self.dense_gflops()
            return Measurement(dense, 1.0, 1.0, None if self.probe.decoder is None else 1.0)
        plugins = code_identity.merging_identity("mix", schedule_key(schedule), "mix")["plugins"]
        key = digest({**self.identity(), "plugins": plugins, "schedule": schedule_key(schedule)})
        if key in self._memory:
            return self._memory[key]
        path = None if self.cache_dir is None else self.cache_dir / f"{key}.json"
        cached = None if path is None else read_json(path)
        if cached is not None:
            found = Measurement(**{k: cached[k] for k in ("gflops", "flops_ratio", "emb_cos", "mask_iou")})
        else:
            found = self._compute(schedule)
            self.computed += 1
            if path is not None:
                atomic_write(path, json.dumps({**found.to_dict(), "schedule": schedule_key(schedule)}, sort_keys=True))
        self._memory[key] = found
        return found

    def _compute(self, schedule: Schedule) -> Measurement:
        reference, flops, dense = self.reference(), self._flops(schedule), self._flops({})
        with tomeplug.patch(self.model, None, layers=schedule):
            emb_cos, iou = compare_outputs(self.probe.run(), reference)
        return Measurement(flops / 1e9, flops / dense, emb_cos, iou)

    def speedup(self, schedule: Schedule, rounds: int = 3) -> float:
        """The encoder's measured speedup under ``schedule`` (dense / patched median, interleaved rounds)."""
        if not schedule:
            return 1.0
        with tomeplug.patch(self.model, None, layers=schedule):
            timing = interleaved_speed(self.probe.encoder, self.probe.flops_input(), rounds)
        return float(timing["speedup"])

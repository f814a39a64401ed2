"""Pick a schedule: the most faithful ``{block: setting}`` schedule that meets a FLOPs or speed target.

``tune(model, images, target={"flops": 0.8})`` needs no labels: it measures, on a few calibration images,
what each candidate (a block with a setting: strategy, ``r``, scope) saves in encoder FLOPs and loses in
fidelity to the unmerged model (:mod:`.tune_measure`: mask IoU of the model's own decoder on fixed grid box
prompts, and embedding cosine), then searches:

- ``search="greedy"`` (default): the convex-hull greedy of a multiple-choice knapsack. Each step adds the
  block, or upgrades a chosen block to a candidate saving more, with the least fidelity loss per FLOP saved
  (both measured for that candidate alone); the combined schedule is re-measured after every step, and the
  search stops at the first one whose measurement meets the target. Then, per chosen block, it drops the
  block or swaps in a candidate of it saving less where that keeps the target met and lowers the measured
  loss. Measurements: one per candidate, one per step, and one per refinement option.
- ``search="exhaustive"``: every assignment of at most one candidate per block (up to ``max_schedules``),
  each measured; the least measured loss among those meeting the target. FLOPs targets only.

Targets: ``flops=f`` (the encoder's FLOPs at most ``f`` times the dense encoder's, counted with fvcore) or
``speedup=s`` (the encoder's measured speedup, interleaved against an unpatched copy, at least ``s``; the
search orders candidates by FLOPs saved and checks the clock after each step).

``python -m tomeplug_eval.tune --help``: the same from the command line, writing the schedule as JSON
(:mod:`.schedule_file`; the harness runs it with ``strategy=mix layers=@schedule.json``) and the report as
markdown. This module is callable: ``from tomeplug_eval import tune; tune(model, images, ...)`` calls
:func:`tune`.
"""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from torch import nn
from tqdm import tqdm

import tomeplug
from tomeplug.registry import get_registry

from .tune_measure import Measurement, Measurer, Schedule
from .tune_probe import make_probe
from .tune_report import TuneReport, setting_label

DEFAULT_R = (0.25, 0.5)
DEFAULT_SCOPES = ("attn",)
GREEDY_OBJECTIVE = "greedy least fidelity loss per FLOP saved, each step re-measured; then refined"
EXHAUSTIVE_OBJECTIVE = "least measured fidelity loss over every schedule of the candidates"


class TargetUnreachableError(RuntimeError):
    """No schedule of the candidates meets the target."""


@attrs.frozen
class Target:
    """What the schedule must meet: ``flops`` (max fraction of dense FLOPs) or ``speedup`` (min measured factor)."""

    flops: float | None = None
    speedup: float | None = None

    def __attrs_post_init__(self) -> None:
        if (self.flops is None) == (self.speedup is None):
            raise ValueError("a target is exactly one of flops=FRACTION (e.g. 0.8) or speedup=FACTOR (e.g. 1.2)")
        if self.flops is not None and not 0 < self.flops <= 1:
            raise ValueError(f"target flops={self.flops} must be a fraction of the dense encoder's FLOPs in (0, 1]")
        if self.speedup is not None and not self.speedup > 0:
            raise ValueError(f"target speedup={self.speedup} must be > 0")

    @classmethod
    def parse(cls, value: Target | Mapping[str, float] | str) -> Target:
        """A target from itself, ``{"flops": 0.8}`` or ``"flops=0.8"`` / ``"speedup=1.2"``."""
        if isinstance(value, Target):
            return value
        if isinstance(value, str):
            key, sep, number = value.partition("=")
            if not sep or key.strip() not in ("flops", "speedup"):
                raise ValueError(f"target {value!r}: write flops=FRACTION or speedup=FACTOR")
            value = {key.strip(): float(number)}
        if not isinstance(value, Mapping) or set(value) - {"flops", "speedup"}:
            raise ValueError(f"target {value!r}: give {{'flops': FRACTION}} or {{'speedup': FACTOR}}")
        return cls(**{k: float(v) for k, v in value.items()})

    def to_dict(self) -> dict[str, float]:
        """``{"flops": f}`` or ``{"speedup": s}``."""
        return {k: v for k, v in attrs.asdict(self).items() if v is not None}


@attrs.frozen
class Candidate:
    """One block with one setting (``{"strategy": name, "r": r, "scope": scope, **params}``)."""

    block: int
    setting: dict[str, Any] = attrs.field(hash=False)

    @property
    def label(self) -> str:
        """``"3: tome r=0.5 attn"``."""
        return f"{self.block}: {setting_label(self.setting)}"


def candidates(
    model: nn.Module,
    blocks: Sequence[int] | None,
    strategy: str,
    r: Sequence[float],
    scopes: Sequence[str],
    params: Mapping[str, Any],
) -> list[Candidate]:
    """Every block x ``r`` x scope, each setting checked on the model (patched and unpatched at once)."""
    depth = len(get_registry().adapter_for(model).blocks(model))
    blocks = list(range(depth)) if blocks is None else list(blocks)
    if not blocks or not r or not scopes:
        raise ValueError("tune needs at least one block, one r and one scope to choose from")
    settings = [{"strategy": strategy, "r": float(v), "scope": s, **params} for v in r for s in scopes]
    for setting in settings:
        tomeplug.patch(model, None, layers=dict.fromkeys(blocks, setting))  # raises on a bad block or setting
        tomeplug.unpatch(model)
    return [Candidate(b, s) for b in blocks for s in settings]


def schedule_of(chosen: Mapping[int, Candidate]) -> Schedule:
    """The schedule of a ``{block: candidate}`` choice."""
    return {block: dict(c.setting) for block, c in sorted(chosen.items())}


class Search:
    """One search's state: the measurer, the target, the progress bar and the path so far."""

    def __init__(self, measurer: Measurer, target: Target, rounds: int, progress: bool) -> None:
        self.measurer, self.target, self.rounds, self.progress = measurer, target, rounds, progress
        self.steps: list[dict[str, Any]] = []
        self.last_speedup: float | None = None

    def meets(self, schedule: Schedule, measured: Measurement) -> bool:
        """Whether ``schedule`` (measured) meets the target; a speed target is timed here."""
        if self.target.flops is not None:
            return measured.flops_ratio <= self.target.flops + 1e-12
        self.last_speedup = self.measurer.speedup(schedule, self.rounds)
        return self.last_speedup >= self.target.speedup

    def record(self, change: str, schedule: Schedule, measured: Measurement) -> None:
        """Append a step of the path."""
        speedup = self.last_speedup if self.target.speedup is not None else None
        self.steps.append(
            {"step": len(self.steps) + 1, "change": change, "blocks": str(sorted(schedule)),
             "flops_ratio": measured.flops_ratio, "loss": measured.loss, "speedup": speedup}
        )  # fmt: skip

    def singles(self, pool: list[Candidate]) -> dict[Candidate, Measurement]:
        """Every candidate measured alone (the sensitivity table)."""
        bar = tqdm(pool, desc="tune: candidates", disable=not self.progress, leave=False)
        return {c: self.measurer.measure({c.block: c.setting}) for c in bar}

    def greedy(self, pool: list[Candidate], alone: dict[Candidate, Measurement]) -> dict[int, Candidate]:
        """The greedy search of the module docstring; the chosen ``{block: candidate}``."""
        saved = {c: 1.0 - alone[c].flops_ratio for c in pool}
        chosen: dict[int, Candidate] = {}
        bar = tqdm(desc="tune: greedy steps", disable=not self.progress, leave=False)
        while True:
            options = []
            for c in pool:
                previous = chosen.get(c.block)
                gain = saved[c] - (saved[previous] if previous else 0.0)
                if gain > 0:
                    loss = alone[c].loss - (alone[previous].loss if previous else 0.0)
                    options.append((loss / gain, -gain, c.block, c))
            if not options:
                raise TargetUnreachableError(self._unreachable(schedule_of(chosen)))
            *_, pick = min(options, key=lambda o: o[:3])
            change = ("upgrade " if pick.block in chosen else "add ") + pick.label
            chosen[pick.block] = pick
            schedule = schedule_of(chosen)
            measured = self.measurer.measure(schedule)
            met = self.meets(schedule, measured)
            self.record(change, schedule, measured)
            bar.update()
            if met:
                break
        bar.close()
        return self.refine(pool, chosen, measured)

    def refine(
        self, pool: list[Candidate], chosen: dict[int, Candidate], measured: Measurement
    ) -> dict[int, Candidate]:
        """Per chosen block (most lossy alone first): drop it, or swap in a candidate of it saving less, if
        that keeps the target met and lowers the measured loss (the best such change)."""
        alone = {c: self.measurer.measure({c.block: c.setting}) for c in pool}
        for block in sorted(chosen, key=lambda b: -alone[chosen[b]].loss):
            saved = alone[chosen[block]].flops_ratio
            options = [None] + [c for c in pool if c.block == block and alone[c].flops_ratio > saved]
            best = None
            for option in options:
                trial = {b: c for b, c in chosen.items() if b != block} | ({} if option is None else {block: option})
                if not trial:
                    continue
                found = self.measurer.measure(schedule_of(trial))
                if found.loss < (measured if best is None else best[1]).loss and self.meets(schedule_of(trial), found):
                    best = (trial, found, option)
            if best is not None:
                chosen, measured, option = best
                change = f"drop {block}" if option is None else f"swap {option.label}"
                self.record(change, schedule_of(chosen), measured)
        return chosen

    def exhaustive(self, pool: list[Candidate], max_schedules: int) -> dict[int, Candidate]:
        """Every assignment of at most one candidate per block; the least loss meeting a FLOPs target."""
        if self.target.flops is None:
            raise ValueError("search='exhaustive' takes a flops target (timing every schedule is not a measurement)")
        per_block: dict[int, list[Candidate | None]] = {}
        for c in pool:
            per_block.setdefault(c.block, [None]).append(c)
        count = 1
        for options in per_block.values():
            count *= len(options)
        if count - 1 > max_schedules:
            raise ValueError(
                f"exhaustive search over {count - 1} schedules exceeds max_schedules={max_schedules}: "
                "use search='greedy', fewer blocks / r values / scopes, or raise max_schedules"
            )
        best: tuple[float, dict[int, Candidate], Measurement] | None = None
        combos = itertools.product(*per_block.values())
        for combo in tqdm(combos, total=count, desc="tune: exhaustive", disable=not self.progress, leave=False):
            chosen = {c.block: c for c in combo if c is not None}
            if not chosen:
                continue
            measured = self.measurer.measure(schedule_of(chosen))
            if self.meets(schedule_of(chosen), measured) and (best is None or measured.loss < best[0]):
                best = (measured.loss, chosen, measured)
        if best is None:
            raise TargetUnreachableError(self._unreachable(schedule_of({c.block: c for c in pool})))
        self.record("best of all", schedule_of(best[1]), best[2])
        return best[1]

    def _unreachable(self, widest: Schedule) -> str:
        return (
            f"no schedule of the candidates meets the target {self.target.to_dict()}: merging every candidate "
            f"block gives FLOPs ratio {self.measurer.measure(widest).flops_ratio:.4f}; allow more blocks, "
            "larger r, a wider scope (block, span) or a looser target"
        )


def sensitivity_rows(alone: dict[Candidate, Measurement]) -> list[dict[str, Any]]:
    """The sensitivity table: one row per candidate, by block."""
    rows = []
    for c, m in sorted(alone.items(), key=lambda item: (item[0].block, setting_label(item[0].setting))):
        saved = 1.0 - m.flops_ratio
        rows.append(
            {"block": c.block, "setting": setting_label(c.setting), "flops_saved": saved, "emb_cos": m.emb_cos,
             "mask_iou": m.mask_iou, "loss": m.loss, "loss_per_flop": m.loss / saved if saved > 0 else None}
        )  # fmt: skip
    return rows


def tune(
    model: nn.Module,
    images: Any,
    target: Target | Mapping[str, float] | str = "flops=0.8",
    *,
    blocks: Sequence[int] | None = None,
    strategy: str = "tome",
    r: Sequence[float] = DEFAULT_R,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    params: Mapping[str, Any] | None = None,
    search: str = "greedy",
    validation_images: Any = None,
    boxes_per_side: int = 2,
    cache_dir: str | Path | None = None,
    time_rounds: int = 3,
    max_schedules: int = 4096,
    progress: bool = False,
) -> tuple[Schedule, TuneReport]:
    """Search the most faithful schedule meeting ``target``; returns it and a :class:`TuneReport`.

    Args:
        model: an unpatched model a tomeplug adapter patches: a whole model of a harness family (SAM, HQ-SAM,
            SAM 2, SAM 3, their transformers and Ultralytics versions; fidelity then includes its decoder's
            masks) or any other (embedding cosine only; the report says so).
        images: calibration images: (H, W, 3) uint8 arrays or ImageItems (SAM family), or the model's
            preprocessed (B, C, H, W) input tensor (other models).
        target: ``{"flops": 0.8}`` / ``"flops=0.8"`` (FLOPs ratio at most) or ``{"speedup": 1.2}`` (measured).
        blocks: candidate blocks (default: every block).
        strategy, r, scopes, params: candidate settings: every ``r`` x scope, with ``params`` (e.g.
            ``{"margin": 0.5}``) for the strategy.
        search: ``"greedy"`` or ``"exhaustive"`` (module docstring).
        validation_images: held-out images to measure the chosen schedule on (the report's ``validation``).
        boxes_per_side: the box-prompt grid (:mod:`.tune_probe`).
        cache_dir: keep measurements here: a rerun, or an interrupted search, resumes from them.
        time_rounds: interleaved timing rounds per speedup measurement.
        max_schedules: the exhaustive search's limit.
        progress: tqdm progress bars.
    Returns:
        ``(schedule, report)``: ``tomeplug.patch(model, None, layers=schedule)`` applies the schedule.
    Raises:
        TargetUnreachableError: no schedule of the candidates meets the target.
    """
    if tomeplug.active_patch(model) is not None:
        raise ValueError("tune needs the unpatched model: call tomeplug.unpatch(model) first")
    target = Target.parse(target)
    if search not in ("greedy", "exhaustive"):
        raise ValueError(f"search={search!r}: choose 'greedy' or 'exhaustive'")
    pool = candidates(model, blocks, strategy, r, scopes, dict(params or {}))
    probe = make_probe(model, images, boxes_per_side)
    measurer = Measurer(model, probe, cache_dir)
    state = Search(measurer, target, time_rounds, progress)
    alone = state.singles(pool)
    if search == "greedy":
        chosen = state.greedy(pool, alone)
    else:
        chosen = state.exhaustive(pool, max_schedules)
    schedule = schedule_of(chosen)
    final = measurer.measure(schedule)
    speedup = measurer.speedup(schedule, time_rounds) if target.speedup is not None else None
    validation = None
    if validation_images is not None:
        validation = Measurer(model, make_probe(model, validation_images, boxes_per_side), cache_dir).measure(schedule)
    fidelity = (
        f"mask IoU ({probe.decoder} decoder, {len(probe.boxes)} grid box prompts per image) and embedding cosine"
        if probe.decoder is not None
        else f"embedding cosine only: no decoder known for {type(model).__name__} (harness families have one)"
    )
    report = TuneReport(
        schedule=schedule,
        target=target.to_dict(),
        search=search,
        objective=GREEDY_OBJECTIVE if search == "greedy" else EXHAUSTIVE_OBJECTIVE,
        fidelity=f"{fidelity}, on {len(probe)} calibration image(s)",
        dense_gflops=measurer.dense_gflops(),
        final=final,
        speedup=speedup,
        rows=sensitivity_rows(alone),
        steps=state.steps,
        validation=validation,
        computed=measurer.computed,
    )
    return schedule, report


class _CallableModule(types.ModuleType):
    """This module's type: calling the module calls :func:`tune` (``from tomeplug_eval import tune``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Schedule, TuneReport]:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def main(argv: Sequence[str] | None = None) -> TuneReport:
    """``python -m tomeplug_eval.tune``: the command line (:mod:`.tune_cli`)."""
    from .tune_cli import main as run

    return run(argv)


if __name__ == "__main__":
    main()

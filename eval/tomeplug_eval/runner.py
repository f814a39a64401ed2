"""One harness job, as :func:`run` strings its stages together.

Open: resolve the config (:mod:`.run_spec`: bad options fail here), join the ranks, load the dataset listing
(bad paths fail here) and key every item by its identity. Skip a run key (config, merging code and item set)
already in ``results.jsonl``. Build the model (seeded, so random weights agree across ranks; a checkpoint
loads strictly) and check the schedule on it (patch and unpatch at once: a bad strategy, parameter or
``layers`` fails here, before any item is computed). Find this rank's cached items. With the model
unpatched, let the task prepare (reference outputs) and count the dense FLOPs; patch, and count the patched
FLOPs (once per model, schedule and input size: cached). Evaluate this rank's unfinished items, caching
each; gather every rank's records on rank 0; time the interleaved speed check; write the run's line and the
tables.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import time
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch

from . import distributed
from .flops_cache import encoder_flops, memory_flops
from .image_task import ImageTask
from .model_catalog import MODELS, RandomWeightsWarning, build_model, default_checkpoint
from .report import write_reports
from .results import ItemCache, ResultsFile, locked
from .run_spec import RunPatch, RunSpec, item_set_digest, plain, resolve
from .speed_check import interleaved_speed
from .tables import item_set_notes
from .tasks import Task, TaskSetup
from .video_task import VideoTask

TASKS: dict[str, type[Task]] = {"image": ImageTask, "video": VideoTask}
"""The evaluation task of each dataset config's ``task`` key."""


def pick_device(name: str, world: distributed.World) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU; anything else as given."""
    if name == "auto":
        return torch.device(f"cuda:{world.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers."""
    found = {}
    for dist in ("tomeplug", "torch", "segment-anything", "segment-anything-hq", "sam2", "sam3", "fvcore"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _say(world: distributed.World, message: str) -> None:
    if world.is_main:
        print(message, flush=True)


@attrs.frozen
class _Job:
    """One job once opened: its config and identity, where it runs, its task and the key of every item."""

    cfg: Any
    spec: RunSpec
    device: torch.device
    world: distributed.World
    output_dir: Path
    results: ResultsFile
    task: Task
    keys: list[str]
    item_set: str
    run_key: str
    started: float

    @property
    def title(self) -> str:
        """How the console names the job."""
        return f"{self.spec.model} / {self.spec.strategy} / {self.cfg.dataset.name} (run {self.run_key})"


def run(cfg: Any) -> dict[str, Any] | None:
    """Run one job of the harness; returns its record on rank 0 (None elsewhere or when skipped)."""
    job = _open(cfg)
    if _finished_earlier(job):
        return None
    model = _build_checked(job)
    cache, done, todo = _cached_items(job)
    handle, flops = _reference_then_patch(job, model, todo)
    done.update(_evaluate(job, cache, todo))
    gathered = distributed.gather(list(done.values()), job.world)
    speed = _speed_check(job, handle)
    if handle is not None:
        handle.remove()
    if not job.world.is_main:
        return None
    record = _record(job, _in_index_order(gathered, len(job.keys)), handle, flops, speed)
    _save(job, record)
    return record


def _open(cfg: Any) -> _Job:
    """Resolve the config (bad options fail here), join the ranks, and load the task's dataset listing (bad
    paths fail here), keying every item by its identity; the run key covers the config, code and items."""
    started = time.perf_counter()
    device = pick_device(str(cfg.device), distributed.world_from_env())
    spec = resolve(cfg, device.type)
    world = distributed.init(device.type, float(cfg.dist_timeout_s))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    output_dir = Path(cfg.output_dir)
    results = ResultsFile(output_dir)
    task = _task_class(str(cfg.dataset.task))(TaskSetup(cfg, spec, device, world, output_dir))
    count = len(task) if cfg.limit is None else min(len(task), int(cfg.limit))
    if count == 0:
        raise ValueError(f"dataset {cfg.dataset.name!r} has no items to evaluate")
    keys = [task.item_key(i) for i in range(count)]  # what each item is: its files, or what generates it
    item_set = item_set_digest(keys)
    return _Job(cfg, spec, device, world, output_dir, results, task, keys, item_set, spec.run_key(item_set), started)


def _task_class(name: str) -> type[Task]:
    """The task class of a dataset config's ``task`` key; an error lists the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} in the dataset config; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def _finished_earlier(job: _Job) -> bool:
    """Whether ``results.jsonl`` already holds this run key (and ``resume`` is on): then the job is skipped."""
    finished = bool(job.cfg.resume) and job.results.finished(job.run_key) is not None
    if distributed.broadcast(finished, job.world):
        _say(job.world, f"[tomeplug] {job.title}: finished earlier, skipped (resume=false reruns it)")
        return True
    return False


def _build_checked(job: _Job) -> torch.nn.Module:
    """Build the model (seeded, so random weights agree across ranks; a checkpoint loads strictly), try the
    schedule on it (a bad schedule fails here, before the reference pass) and hand it to the task unpatched."""
    spec, cfg = job.spec, job.cfg
    if spec.weights == "random":
        why = f"RANDOM WEIGHTS ({_why_random(spec, cfg)}); FLOPs and timings real, masks meaningless"
        _say(job.world, f"[tomeplug] !!! {spec.model}: {why}")
    family = MODELS[spec.model].family
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # said once, loudly, above
        model = build_model(spec.model, spec.checkpoint, **job.task.model_options(family)).to(job.device)
    spec.check(model)
    job.task.bind(model, family)
    return model


def _why_random(spec: RunSpec, cfg: Any) -> str:
    """Why a run has random weights, for the console."""
    if cfg.checkpoint != "auto":
        return "checkpoint=random"
    where = default_checkpoint(spec.model)
    return f"no checkpoint at {where}" if where else "no official file"


def _cached_items(job: _Job) -> tuple[ItemCache, dict[int, dict[str, Any]], list[int]]:
    """This rank's shard split into the items cached by an earlier attempt (by item key, so an item that
    changed or moved is found only under its own key) and those still to do; ``resume=false`` clears the cache."""
    world, keys = job.world, job.keys
    cache = ItemCache(job.output_dir, job.spec.items_key, world.rank)
    if not job.cfg.resume and world.is_main:
        cache.clear()
    distributed.barrier(world)
    mine = distributed.shard(range(len(keys)), world)
    cached = cache.load()
    done = {i: {**cached[keys[i]], "index": i} for i in mine if keys[i] in cached}
    todo = [i for i in mine if i not in done]
    _say(world, f"[tomeplug] {job.title}: {len(keys)} items, {world.size} process(es), {len(done)} cached on rank 0")
    return cache, done, todo


def _reference_then_patch(
    job: _Job, model: torch.nn.Module, todo: list[int]
) -> tuple[RunPatch | None, dict[str, Any] | None]:
    """With the model unpatched: the task's reference outputs and the dense FLOPs; then patch the model and
    count its FLOPs (rank 0, ``flops`` on; cached per model, schedule and input size)."""
    job.task.prepare(todo)
    if not (job.world.is_main and job.cfg.flops):
        return job.spec.patch(model), None
    task, out, name = job.task, job.output_dir, job.spec.model
    dense, dense_memory = encoder_flops(task, out, name, None), memory_flops(task, out, name, None)
    handle = job.spec.patch(model)
    code = job.spec.merging_code
    flops = _flops_entry(encoder_flops(task, out, name, handle, code), dense)
    if dense_memory is not None:
        memory = _flops_entry(memory_flops(task, out, name, handle, code), dense_memory)
        flops["memory_attention"] = memory
        flops["frame_gflops"] = flops["gflops"] + memory["gflops"]
        flops["dense_frame_gflops"] = dense["gflops"] + dense_memory["gflops"]
    return handle, flops


def _flops_entry(flops: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """A ``flops`` entry of the record: the patched count with the dense GFLOPs and the ratio of the two."""
    ratio = flops["total"] / dense["total"] if dense["total"] else float("nan")
    return {**flops, "dense_gflops": dense["gflops"], "ratio": ratio}


def _evaluate(job: _Job, cache: ItemCache, todo: list[int]) -> dict[int, dict[str, Any]]:
    """Evaluate this rank's unfinished items with the patched model, caching each record as it finishes."""
    done = {}
    for record in job.task.evaluate(todo):
        record = {**record, "item": job.keys[record["index"]]}
        cache.append(record)
        done[record["index"]] = record
    return done


def _speed_check(job: _Job, handle: RunPatch | None) -> dict[str, Any] | None:
    """On rank 0 with ``speed_rounds``: the patched encoder timed against an unpatched copy, interleaved."""
    if not (job.world.is_main and handle is not None and job.cfg.speed_rounds):
        return None
    encoder, inputs = job.task.flops_input()
    return interleaved_speed(encoder, inputs, int(job.cfg.speed_rounds), int(job.cfg.warmup), job.task.autocast)


def _in_index_order(gathered: list[list[dict[str, Any]]], count: int) -> list[dict[str, Any]]:
    """Every rank's records in index order; an error unless they cover ``0..count-1`` exactly once."""
    records = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    if [r["index"] for r in records] != list(range(count)):
        raise RuntimeError(f"gathered items do not cover 0..{count - 1} exactly once")
    return records


def _record(
    job: _Job,
    records: list[dict[str, Any]],
    handle: RunPatch | None,
    flops: dict[str, Any] | None,
    speed: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run's line of ``results.jsonl``, as stored (JSON keys and types)."""
    spec, cfg = job.spec, job.cfg
    record = {
        "run_key": job.run_key,
        "items": job.item_set,
        "items_key": spec.items_key,
        "merging_code": spec.merging_code,
        "model": spec.model,
        "weights": spec.weights,
        "checkpoint": None if spec.checkpoint is None else str(spec.checkpoint),
        "dataset": str(cfg.dataset.name),
        "task": job.task.name,
        "strategy": spec.strategy,
        "layers": spec.layers,
        **({"memory_layers": spec.memory_layers} if spec.memory_layers != [] else {}),
        "params": spec.params,
        "blocks": None if handle is None else handle.to_dict(),
        **job.task.summarise(records),
        "flops": flops,
        "plot_metrics": list(job.task.plot_metrics),
        "device": job.device.type,
        "world_size": job.world.size,
        "wall_s": time.perf_counter() - job.started,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "config": plain(cfg),
    }
    if speed is not None:
        record["latency"] = {**record["latency"], "interleaved": speed}
    return json.loads(json.dumps(record))


def _save(job: _Job, record: dict[str, Any]) -> None:
    """Add the record to ``results.jsonl`` and rewrite the tables and plot, under the output folder's lock."""
    with locked(job.output_dir):
        records = job.results.add(record)
        write_reports(records, job.output_dir)
    for note in item_set_notes(records):
        _say(job.world, f"[tomeplug] note: {note}")

"""One harness job: resolve, skip if finished, evaluate this rank's unfinished items, gather, record.

Steps: resolve the config (:mod:`.run_spec`: bad options fail here); load the dataset listing (bad paths
fail here) and key every item by its identity; skip a run key (config, merging code and item set) already
in ``results.jsonl``; build the model (seeded, so random weights agree across ranks), load its checkpoint
strictly and check the schedule on it (patch and unpatch at once: a bad strategy, parameter or ``layers``
fails here, before any item is computed); let the task prepare with the model unpatched (reference
outputs); patch; evaluate this rank's unfinished items, caching each; gather every rank's records on rank
0; count FLOPs (once per model, schedule and input size: cached); write the run's line and the tables.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .flops_cache import encoder_flops
from .report import write_reports
from .results import ItemCache, ResultsFile, locked
from .run_spec import RunSpec, item_set_digest, plain, resolve
from .sam_models import RandomWeightsWarning, build_model, default_checkpoint, model_spec
from .speed_check import interleaved_speed
from .tables import item_set_notes
from .tasks import Task, TaskSetup, task_class


def pick_device(name: str, world: distributed.World) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU; anything else as given."""
    if name == "auto":
        return torch.device(f"cuda:{world.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers."""
    found = {}
    for dist in ("tomeplug", "torch", "segment-anything", "segment-anything-hq", "sam2", "fvcore"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _build(spec: RunSpec, cfg: Any, device: torch.device, options: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # said once, loudly, by the runner
        return build_model(spec.model, spec.checkpoint, **options).to(device)


def _why_random(spec: RunSpec, cfg: Any) -> str:
    if cfg.checkpoint != "auto":
        return "checkpoint=random"
    where = default_checkpoint(spec.model)
    return f"no checkpoint at {where}" if where else "no official file"


def _say(world: distributed.World, message: str) -> None:
    if world.is_main:
        print(message, flush=True)


def run(cfg: Any) -> dict[str, Any] | None:
    """Run one job of the harness; returns its record on rank 0 (None elsewhere or when skipped)."""
    started = time.perf_counter()
    probe = distributed.world_from_env()
    device = pick_device(str(cfg.device), probe)
    spec = resolve(cfg, device.type)
    world = distributed.init(device.type, float(cfg.dist_timeout_s))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    output_dir = Path(cfg.output_dir)
    results = ResultsFile(output_dir)
    task: Task = task_class(str(cfg.dataset.task))(TaskSetup(cfg, spec, device, world, output_dir))
    count = len(task) if cfg.limit is None else min(len(task), int(cfg.limit))
    if count == 0:
        raise ValueError(f"dataset {cfg.dataset.name!r} has no items to evaluate")
    keys = [task.item_key(i) for i in range(count)]  # what each item is: its files, or what generates it
    item_set = item_set_digest(keys)
    run_key = spec.run_key(item_set)
    title = f"{spec.model} / {spec.strategy} / {cfg.dataset.name} (run {run_key})"
    if distributed.broadcast(bool(cfg.resume) and results.finished(run_key) is not None, world):
        _say(world, f"[tomeplug] {title}: finished earlier, skipped (resume=false reruns it)")
        return None
    if spec.weights == "random":
        why = _why_random(spec, cfg)
        _say(world, f"[tomeplug] !!! {spec.model}: RANDOM WEIGHTS ({why}); FLOPs and timings real, masks meaningless")
    family = model_spec(spec.model).family
    model = _build(spec, cfg, device, task.model_options(family))
    spec.check(model)  # a bad schedule fails here, before the reference pass
    task.bind(model, family)
    cache = ItemCache(output_dir, spec.items_key, world.rank)
    if not cfg.resume and world.is_main:
        cache.clear()
    distributed.barrier(world)
    mine = distributed.shard(range(count), world)
    cached = cache.load()  # by item key: an item that changed or moved is found only under its own key
    done = {i: {**cached[keys[i]], "index": i} for i in mine if keys[i] in cached}
    todo = [i for i in mine if i not in done]
    _say(world, f"[tomeplug] {title}: {count} items, {world.size} process(es), {len(done)} cached on rank 0")
    task.prepare(todo)
    dense = encoder_flops(task, output_dir, spec.model, None) if world.is_main and cfg.flops else None
    handle = spec.patch(model)
    code = spec.merging_code
    flops = encoder_flops(task, output_dir, spec.model, handle, code) if world.is_main and cfg.flops else None
    for record in task.evaluate(todo):
        record = {**record, "item": keys[record["index"]]}
        cache.append(record)
        done[record["index"]] = record
    gathered = distributed.gather(list(done.values()), world)
    speed = None
    if world.is_main and handle is not None and cfg.speed_rounds:
        encoder, inputs = task.flops_input()
        speed = interleaved_speed(encoder, inputs, int(cfg.speed_rounds), int(cfg.warmup), task.autocast)
    if handle is not None:
        handle.remove()
    if not world.is_main:
        return None
    records = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    if [r["index"] for r in records] != list(range(count)):
        raise RuntimeError(f"gathered items do not cover 0..{count - 1} exactly once")
    record = {
        "run_key": run_key,
        "items": item_set,
        "items_key": spec.items_key,
        "merging_code": spec.merging_code,
        "model": spec.model,
        "weights": spec.weights,
        "checkpoint": None if spec.checkpoint is None else str(spec.checkpoint),
        "dataset": str(cfg.dataset.name),
        "task": task.name,
        "strategy": spec.strategy,
        "layers": spec.layers,
        "params": spec.params,
        "blocks": None if handle is None else handle.to_dict(),
        **task.summarise(records),
        "flops": None if flops is None else {**flops, "dense_gflops": dense["gflops"]} | _ratio(flops, dense),
        "plot_metrics": list(task.plot_metrics),
        "device": device.type,
        "world_size": world.size,
        "wall_s": time.perf_counter() - started,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "config": plain(cfg),
    }
    if speed is not None:
        record["latency"] = {**record["latency"], "interleaved": speed}
    record = json.loads(json.dumps(record))  # as stored: JSON keys and types
    with locked(output_dir):
        records = results.add(record)
        write_reports(records, output_dir)
    for note in item_set_notes(records):
        _say(world, f"[tomeplug] note: {note}")
    return record


def _ratio(flops: dict[str, Any], dense: dict[str, Any]) -> dict[str, float]:
    return {"ratio": flops["total"] / dense["total"] if dense["total"] else float("nan")}

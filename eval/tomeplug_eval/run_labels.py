"""What tells the runs of a sweep apart: each run's parameters, and a label naming those that differ.

A run's parameters (:func:`parameters`) are

- its merge settings, resolved per block (``record["blocks"]``): ``r``, the strategy's own parameters
  (``margin``, ...) and the options (``scope``, ``metric``, ``prop_attn``, ``exclude_padding``), defaults
  included, so ``strategy.margin=0.5`` and the default margin read the same; a key whose blocks disagree reads
  ``{block: value}``. A record without blocks falls back to its ``params``;
- its run options: the resolved config less what the table shows in its own columns (model, dataset,
  strategy, layers) and what changes no number (``output_dir``, ``progress``, ...), e.g. ``dtype``,
  ``batch_size``, ``keep_aspect``, ``threads``, ``limit``, model and dataset options;
- the device, the checkpoint file and the merging code (``code``, ``plugin.<strategy>``).

A parameter *varies* when two rows of one model, weights and dataset give it different values. Every row is
labelled by the varying parameters it has (``r=0.25 scope=span``, :func:`labels`), so the rows of a sweep
over ``r``, ``strategy.scope`` or ``strategy.margin`` never look alike; rows that still coincide (the same
config over a checkpoint file rewritten in place) get their run key (``run=...``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

NOT_PARAMETERS = (
    # shown in their own columns, or resolved per block (blocks) and on the row (device, checkpoint)
    *("model.name", "dataset.name", "strategy", "layers", "r", "device", "checkpoint"),
    # change no number of the run
    *("output_dir", "progress", "resume", "dist_timeout_s", "flops"),
)
NOT_COST = ("limit", "data_root", "checkpoint", "seed", "warmup", "speed_rounds", "boundary_dilation", "code", "plugin")
"""Run parameters that do not change what an encoder forward costs: a ``none`` row that differs from a merged
row only in these is still its baseline (speedup, peak memory ratio); the item set is matched apart."""
GROUP = ("model", "weights", "dataset")
"""Rows that differ in one of these columns already look different: parameters vary within such a group."""


def format_value(value: Any) -> str:
    """A parameter value as a label shows it: strings bare, floats by ``repr``, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _excluded(name: str, excluded: Sequence[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in excluded)


def merge_parameters(record: Mapping[str, Any]) -> dict[str, str]:
    """The run's per-block settings (the strategy's name aside), one value per key; ``{}`` for ``none``."""
    layers = (record.get("blocks") or {}).get("layers")
    if not layers:
        params = {} if record.get("strategy") == "none" else record.get("params") or {}
        return {k: format_value(v) for k, v in _flatten(params).items()}
    by_key: dict[str, dict[str, str]] = {}
    for block, setting in layers.items():
        for key, value in _flatten(setting).items():
            key = key.removeprefix("strategy.")
            if key not in ("strategy", "name"):
                by_key.setdefault(key, {})[str(block)] = format_value(value)
    out = {}
    for key, values in by_key.items():
        distinct = set(values.values())
        out[key] = (
            distinct.pop() if len(distinct) == 1 else "{" + ", ".join(f"{b}: {v}" for b, v in values.items()) + "}"
        )
    return out


def run_parameters(record: Mapping[str, Any]) -> dict[str, str]:
    """The run's options (config less :data:`NOT_PARAMETERS`), device, checkpoint and merging code."""
    config = _flatten(record.get("config") or {})
    out = {k: format_value(v) for k, v in config.items() if not _excluded(k, NOT_PARAMETERS)}
    for key in ("device", "checkpoint"):
        if record.get(key) is not None:
            out[key] = str(record[key])
    code = record.get("merging_code") or {}
    if code.get("source"):
        out["code"] = str(code["source"])[:8]
    for strategy, plugin in (code.get("plugins") or {}).items():
        out[f"plugin.{strategy}"] = (
            f"{plugin.get('distribution')}=={plugin.get('version')}:{str(plugin.get('source'))[:8]}"
        )
    return out


def _rank(key: str, merge: Mapping[str, str]) -> tuple[int, str]:
    return (0 if key == "r" else 1 if key in merge else 2), key


def parameters(record: Mapping[str, Any]) -> dict[str, str]:
    """Every parameter of a run, formatted: merge settings (``r`` first), then run options, each by name."""
    merge = merge_parameters(record)
    every = merge | run_parameters(record)
    return {k: every[k] for k in sorted(every, key=lambda k: _rank(k, merge))}


def cost_parameters(record: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The run options that change what a forward costs (run parameters less :data:`NOT_COST`), sorted."""
    return tuple((k, v) for k, v in sorted(run_parameters(record).items()) if not _excluded(k, NOT_COST))


def varying(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The parameters that take two or more values among rows of one model, weights and dataset, in the
    order of :func:`parameters`."""
    values: dict[tuple[Any, ...], dict[str, set[str]]] = {}
    ranks: dict[str, tuple[int, str]] = {}
    for record in records:
        group = values.setdefault(tuple(record.get(k) for k in GROUP), {})
        merge = merge_parameters(record)
        for key, value in parameters(record).items():
            group.setdefault(key, set()).add(value)
            ranks[key] = min(ranks.get(key, (2, key)), _rank(key, merge))
    keys = [k for k in ranks if any(len(group.get(k, ())) > 1 for group in values.values())]
    return sorted(keys, key=ranks.__getitem__)


def _looks(record: Mapping[str, Any], label: str) -> tuple[Any, ...]:
    shown = (*GROUP, "strategy", "device", "items")
    return (*(str(record.get(k)) for k in shown), json.dumps(record.get("layers"), sort_keys=True), label)


def _label(own: Mapping[str, str], keys: Sequence[str]) -> str:
    return " ".join(f"{k}={own[k]}" for k in keys if k in own)


def labels(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One label per record: ``name=value`` for each :func:`varying` parameter it has (``""`` if none); a
    run key is added to rows that would otherwise look the same as another run's."""
    keys = varying(records)
    out = [_label(parameters(record), keys) for record in records]
    seen: dict[tuple[Any, ...], set[Any]] = {}
    for record, label in zip(records, out, strict=True):
        seen.setdefault(_looks(record, label), set()).add(record.get("run_key"))
    return [
        f"{label} run={str(record.get('run_key'))[:8]}".strip() if len(seen[_looks(record, label)]) > 1 else label
        for record, label in zip(records, out, strict=True)
    ]


def run_title(record: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """``model / strategy / dataset (label)`` of ``record`` for the console: the label names the parameters
    that vary among ``records`` and those the run set itself (its ``params``), so the first job of a sweep
    is labelled too."""
    title = f"{record['model']} / {record['strategy']} / {record['dataset']}"
    others = [r for r in records if r.get("run_key") != record.get("run_key")]
    keys = varying([*others, record])
    label = _label(parameters(record), [*keys, *(k for k in record.get("params") or {} if k not in keys)])
    return f"{title} ({label})" if label else title

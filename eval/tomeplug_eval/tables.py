"""Tables across a sweep: every run of ``results.jsonl`` as one row of a CSV and of a markdown table.

Speedup and FLOPs ratio are relative to the unmerged baseline: the ``strategy=none`` run of the same model,
weights, dataset, device and item set when it is in the file (speedup), and the dense FLOPs count every run
records. Accuracy and fidelity metrics are shown in percent, cosines as they are.

Every row names its item set (``items``: the fingerprint of the items it was computed over, see
:mod:`.run_spec`). Rows of one dataset over different item sets (the folder changed between runs) are not
comparable: the markdown table says so under the table (:func:`item_set_notes`), and a row without a
``none`` row over its own items gets no speedup.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

IDENTITY = ("model", "weights", "dataset", "strategy", "schedule")
METRIC_LABELS = {"miou": "mIoU", "mbiou": "mBIoU", "fid_iou": "fid. IoU", "emb_cos": "emb. cos"}
COSTS = (
    ("gflops", "GFLOPs", "{:.4g}"),
    ("flops_ratio", "FLOPs", "{:.3f}"),
    ("overhead_g", "merge ovh. G", "{:.3g}"),
    ("latency_ms", "ms/img", "{:.1f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("peak_mem_mb", "peak MB", "{:.0f}"),
    ("images", "images", "{}"),
)


def schedule_label(record: dict[str, Any]) -> str:
    """How the run chose its blocks: ``paper``, ``all``, ``[0, 2, 5]`` or ``{0: tome, 4: pitome}``; ``-`` for none."""
    if record.get("strategy") == "none":
        return "-"
    layers = record.get("layers")
    if layers is None:
        return "all"
    if isinstance(layers, dict):
        return "{" + ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in layers.items()) + "}"
    return str(layers) if isinstance(layers, str) else "[" + ", ".join(map(str, layers)) + "]"


def _baseline_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return record["model"], record["weights"], record["dataset"], record.get("device"), record.get("items")


def short_items(record: dict[str, Any]) -> str:
    """The first 8 characters of a record's item-set fingerprint; ``?`` for a record written without one."""
    return (record.get("items") or "?")[:8]


def mixed_item_sets(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """The datasets whose rows were computed over more than one item set, with those sets (:func:`short_items`;
    a record without a fingerprint counts as a set of its own)."""
    sets: dict[str, dict[str, None]] = {}
    for r in records:
        sets.setdefault(str(r.get("dataset")), {})[short_items(r)] = None
    return {dataset: list(found) for dataset, found in sets.items() if len(found) > 1}


def item_set_notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per dataset of :func:`mixed_item_sets`, saying that its rows over different items do not compare."""
    return [
        f"{dataset}: rows over {len(found)} different item sets (items {', '.join(found)}): the data changed "
        "between runs; compare rows only within one item set (speedup is only against a none row over the same items)"
        for dataset, found in mixed_item_sets(records).items()
    ]


def rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per record: identity, parameters, metrics, costs (speedup: the run's own interleaved
    check where it made one, else its latency against the ``none`` run's)."""
    baselines = {_baseline_key(r): r for r in records if r.get("strategy") == "none" and r.get("items")}
    out = []
    for r in records:
        flops, latency = r.get("flops") or {}, r.get("latency") or {}
        base = baselines.get(_baseline_key(r))  # never one over other (or unknown) items
        base_s = ((base or {}).get("latency") or {}).get("encoder_s")
        own_s = latency.get("encoder_s")
        interleaved = (latency.get("interleaved") or {}).get("speedup")  # this run's own ABBA timing
        row = {key: r.get(key) for key in IDENTITY} | {"schedule": schedule_label(r)}
        row["params"] = json.dumps(r.get("params") or {}, sort_keys=True)
        row.update(r.get("metrics") or {})
        row.update(
            gflops=flops.get("gflops"),
            dense_gflops=flops.get("dense_gflops"),
            flops_ratio=flops.get("ratio"),
            overhead_g=flops.get("overhead_g"),
            latency_ms=None if own_s is None else 1000 * own_s,
            speedup=interleaved or (base_s / own_s if base_s and own_s else None),
            peak_mem_mb=r.get("peak_mem_mb"),
            images=r.get("images", r.get("frames")),  # encoder images: a video frame is one
            objects=r.get("objects"),
            device=r.get("device"),
            items=r.get("items"),
            run_key=r.get("run_key"),
        )
        out.append(row)
    return out


def metric_names(records: Sequence[dict[str, Any]]) -> list[str]:
    """The metric columns present: the known ones in :data:`METRIC_LABELS` order, then others as first seen."""
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r.get("metrics") or {}))
    known = list(METRIC_LABELS)
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), list(names).index(n)))


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    """Every row with every column (raw fractions, seconds as ms)."""
    table = rows(records)
    columns: dict[str, None] = {}
    for row in table:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def _metric_cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if "cos" in name else f"{100 * value:.2f}"


def to_markdown(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of every run: identity, metrics (percent; cosines raw), costs, item set; then a note
    for each dataset whose rows cover different item sets (:func:`item_set_notes`)."""
    table = rows(records)
    metrics = metric_names(records)
    head = [*IDENTITY, *(METRIC_LABELS.get(m, m) for m in metrics), *(label for _, label, _ in COSTS), "items"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for record, row in zip(records, table, strict=True):
        cells = [str(row[key]) for key in IDENTITY] + [_metric_cell(m, row.get(m)) for m in metrics]
        cells += ["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COSTS]
        lines.append("| " + " | ".join([*cells, short_items(record)]) + " |")
    notes = item_set_notes(records)
    lines += ["", *(f"**Note**: {note}." for note in notes)] if notes else []
    return "\n".join(lines) + "\n"

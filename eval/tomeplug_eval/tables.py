"""Tables across a sweep: every run of ``results.jsonl`` as one row of a CSV and of a markdown table.

Speedup, peak memory ratio and FLOPs ratio are relative to the unmerged baseline: the ``strategy=none`` run
of the same model, weights, dataset, device, item set and cost-relevant run options (``dtype``,
``batch_size``, ... :func:`.run_labels.cost_parameters`) when it is in the file (speedup, peak memory), and
the dense FLOPs count every run records. Accuracy and fidelity metrics are shown in percent, cosines as
they are. Rows of a sweep are told apart by the parameters that differ between them (``varies``,
:mod:`.run_labels`), and the markdown table ends with a legend of its columns (:data:`LEGEND`).

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

from .run_labels import cost_parameters, labels

IDENTITY = ("model", "weights", "dataset", "strategy", "schedule")
METRIC_LABELS = {"miou": "mIoU", "mbiou": "mBIoU", "fid_iou": "fid. IoU", "emb_cos": "emb. cos"}
COSTS = (
    ("gflops", "GFLOPs", "{:.4g}"),
    ("flops_ratio", "FLOPs", "{:.3f}"),
    ("overhead_g", "merge ovh. G", "{:.3g}"),
    ("latency_ms", "ms/img", "{:.1f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("peak_mem_mb", "peak MB", "{:.0f}"),
    ("peak_ratio", "peak ×", "{:.2f}x"),
    ("images", "images", "{}"),
)
VIDEO_COSTS = (
    ("memory_gflops", "mem. GFLOPs", "{:.4g}"),
    ("memory_flops_ratio", "mem. FLOPs", "{:.3f}"),
    ("encoder_ms_frame", "enc. ms/frame", "{:.1f}"),
    ("memory_ms_frame", "mem. ms/frame", "{:.1f}"),
    ("rest_ms_frame", "rest ms/frame", "{:.1f}"),
)
"""Video runs' memory-attention costs and per-frame time split: columns shown when a row has them."""
VARIES = "varies"
"""The markdown column of each row's :func:`.run_labels.labels` (shown when a parameter varies)."""
LEGEND = {
    "model": "the model (`tomeplug_eval/conf/model/`)",
    "weights": "`checkpoint` (official weights) or `random` (accuracy meaningless; FLOPs, fidelity, time and "
    "memory real)",
    "dataset": "the dataset (`tomeplug_eval/conf/dataset/`)",
    "strategy": "the merge algorithm; `none` is the unmerged baseline the ratios are taken against",
    "schedule": "the blocks that merge: `all`, `[0, 2, 5]`, or `{block: strategy}` for `mix`; `-` for none",
    VARIES: "the parameters that differ between rows of one model, weights and dataset, as `name=value`: "
    "merge settings resolved per block (`{block: value}` where blocks differ), run options (`dtype`, "
    "`limit`, ...), `device`, `code` (the merging code's hash); `run=` a run key where nothing else differs",
    "mIoU": "mask IoU against the ground truth, mean over objects (%)",
    "mBIoU": "boundary IoU against the ground truth (band: `boundary_dilation` of the image diagonal), mean "
    "over objects (%)",
    "fid. IoU": "fidelity: mask IoU against the same model unmerged on the same prompts, mean over objects (%)",
    "emb. cos": "fidelity: cosine of the merged and the unmerged image embeddings, mean over images",
    "J": "region IoU against the ground truth, mean over objects (first and last frames not scored) (%)",
    "F": "boundary F-measure against the ground truth (DAVIS), mean over objects (%)",
    "J&F": "mean of J and F (%)",
    "fidelity_J": "fidelity: J against the same model unmerged (%)",
    "GFLOPs": "encoder GFLOPs of one image or frame (fvcore; one multiply-add is one flop)",
    "FLOPs": "encoder FLOPs as a fraction of the dense encoder's",
    "merge ovh. G": "the merge's own gather, scatter and sort element operations (G), counted apart",
    "ms/img": "median encoder wall-clock per image (a video frame is one)",
    "speedup": "encoder time of the matching `none` row over this row's, or this run's own interleaved "
    "timing against an unpatched copy (`speed_rounds`)",
    "peak MB": "the encoder forward's transient memory (MiB): `max_memory_allocated` on CUDA; on CPU the "
    "sampled growth of the resident set over the first batch (varies between runs)",
    "peak ×": "peak MB over the matching `none` row's; **bold** above 1: merging raised the peak (README, "
    "Evaluation: when merging raises peak memory)",
    "images": "images evaluated (videos: frames)",
    "mem. GFLOPs": "SAM 2 video: memory-attention GFLOPs of a steady-state frame (full memory bank, one object)",
    "mem. FLOPs": "memory-attention FLOPs as a fraction of the dense memory attention's",
    "enc. ms/frame": "video: image-encoder wall-clock per frame (total over frames)",
    "mem. ms/frame": "video: memory-attention wall-clock per frame (every object's call)",
    "rest ms/frame": "video: the rest of a frame's wall-clock (loading, prompts, decoder, memory encoder)",
    "items": "the item set's fingerprint: rows compare only within one item set",
}
"""What each column of the markdown table means, written under it for the columns it has."""


def schedule_label(record: dict[str, Any]) -> str:
    """How the run chose its blocks: ``paper``, ``all``, ``[0, 2, 5]`` or ``{0: tome, 4: pitome}``; ``-`` for none."""
    if record.get("strategy") == "none":
        return "-"
    label = _layers_label(record.get("layers"))
    memory = record.get("memory_layers", [])
    return label if memory == [] else f"{label}; memory {_layers_label(memory)}"


def _layers_label(layers: Any) -> str:
    """``all``, ``[0, 2, 5]``, ``paper`` or ``{0: tome, 4: pitome}``."""
    if layers is None:
        return "all"
    if isinstance(layers, dict):
        return "{" + ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in layers.items()) + "}"
    return str(layers) if isinstance(layers, str) else "[" + ", ".join(map(str, layers)) + "]"


def _baseline_key(record: dict[str, Any]) -> tuple[Any, ...]:
    data = (record["model"], record["weights"], record["dataset"], record.get("device"), record.get("items"))
    return *data, cost_parameters(record)


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
    """One flat row per record: identity, the parameters that tell it apart (``varies``), metrics, costs
    (speedup: the run's own interleaved check where it made one, else its latency against the ``none``
    run's; ``peak_ratio``: its peak memory over the ``none`` run's)."""
    baselines = {_baseline_key(r): r for r in records if r.get("strategy") == "none" and r.get("items")}
    out = []
    for r, label in zip(records, labels(records), strict=True):
        flops, latency = r.get("flops") or {}, r.get("latency") or {}
        base = baselines.get(_baseline_key(r))  # never one over other (or unknown) items
        base_s = ((base or {}).get("latency") or {}).get("encoder_s")
        own_s = latency.get("encoder_s")
        interleaved = (latency.get("interleaved") or {}).get("speedup")  # this run's own ABBA timing
        base_peak = (base or {}).get("peak_mem_mb")
        row = {key: r.get(key) for key in IDENTITY} | {"schedule": schedule_label(r), VARIES: label}
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
            peak_ratio=r["peak_mem_mb"] / base_peak if base_peak and r.get("peak_mem_mb") is not None else None,
            **_video_costs(flops, latency),
            images=r.get("images", r.get("frames")),  # encoder images: a video frame is one
            objects=r.get("objects"),
            device=r.get("device"),
            items=r.get("items"),
            run_key=r.get("run_key"),
        )
        out.append(row)
    return out


def _video_costs(flops: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any]:
    """A video row's :data:`VIDEO_COSTS` (ms per frame from seconds); empty for other rows."""
    memory, split = flops.get("memory_attention") or {}, latency.get("split") or {}
    out = {"memory_gflops": memory.get("gflops"), "memory_flops_ratio": memory.get("ratio")}
    stages = {"encoder_ms_frame": "encoder_s", "memory_ms_frame": "memory_attention_s", "rest_ms_frame": "rest_s"}
    out |= {column: None if split.get(key) is None else 1000 * split[key] for column, key in stages.items()}
    return {k: v for k, v in out.items() if v is not None}


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


def in_percent(metric: str) -> bool:
    """Whether a metric is shown in percent (every one but cosines, shown as they are)."""
    return "cos" not in metric


def _metric_cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if in_percent(name) else f"{value:.4f}"


def _cost_cell(key: str, fmt: str, value: Any) -> str:
    if value is None:
        return "-"
    cell = fmt.format(value)
    return f"**{cell}**" if key == "peak_ratio" and float(cell.rstrip("x")) > 1 else cell  # merging raised the peak


def legend(columns: Sequence[str]) -> list[str]:
    """The markdown legend of ``columns`` (their labels), one line each (:data:`LEGEND`; a metric it does not
    know is described as the task's)."""
    return [f"- **{c}**: {LEGEND.get(c, 'a metric the task reports (% unless a cosine)')}" for c in columns]


def to_markdown(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of every run: identity, the parameters that tell rows apart (when any varies),
    metrics (percent; cosines raw), costs, item set; then a note for each dataset whose rows cover
    different item sets (:func:`item_set_notes`), and the legend of every column (:func:`legend`)."""
    table = rows(records)
    metrics = metric_names(records)
    varies = [VARIES] if any(row[VARIES] for row in table) else []
    costs = [*COSTS, *(c for c in VIDEO_COSTS if any(row.get(c[0]) is not None for row in table))]
    head = [*IDENTITY, *varies, *(METRIC_LABELS.get(m, m) for m in metrics), *(label for _, label, _ in costs), "items"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for record, row in zip(records, table, strict=True):
        cells = [str(row[key]) for key in IDENTITY] + [row[VARIES] or "-" for _ in varies]
        cells += [_metric_cell(m, row.get(m)) for m in metrics]
        cells += [_cost_cell(key, fmt, row.get(key)) for key, _, fmt in costs]
        cells = [cell.replace("|", "\\|") for cell in [*cells, short_items(record)]]
        lines.append("| " + " | ".join(cells) + " |")
    notes = item_set_notes(records)
    lines += ["", *(f"**Note**: {note}." for note in notes)] if notes else []
    lines += ["", "Columns:", "", *legend(head)]
    return "\n".join(lines) + "\n"

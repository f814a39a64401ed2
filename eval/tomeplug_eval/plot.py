"""The sweep's plot: accuracy and fidelity against encoder GFLOPs and against latency (matplotlib, Agg).

One panel per (y, x) pair: rows are the accuracy metric (mIoU for images) and the fidelity metric (mask IoU
against the unmerged model), columns GFLOPs and ms per image. Each (model, dataset, weights, item set) is one
series; every point is labelled with its strategy.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .results import atomic_write
from .tables import METRIC_LABELS, mixed_item_sets, rows

X_AXES = (("gflops", "encoder GFLOPs"), ("latency_ms", "encoder ms / image"))


def plot(records: Sequence[dict[str, Any]], path: Path) -> bool:
    """Draw the runs of ``records`` to ``path`` (PNG, written atomically); False if nothing is plottable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rows(records)
    y_axes: dict[str, None] = {}
    for record in records:
        y_axes.update(dict.fromkeys(record.get("plot_metrics") or ()))
    if not table or not y_axes:
        return False
    fig, axes = plt.subplots(len(y_axes), len(X_AXES), figsize=(11, 4 * len(y_axes)), squeeze=False)
    series: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in table:
        series.setdefault((row["model"], row["dataset"], row["weights"], row["items"]), []).append(row)
    mixed = mixed_item_sets(records)
    for i, y in enumerate(y_axes):
        for j, (x, x_label) in enumerate(X_AXES):
            ax = axes[i][j]
            for (model, dataset, weights, items), points in series.items():
                points = [p for p in points if p.get(x) is not None and p.get(y) is not None]
                if not points:
                    continue
                points.sort(key=lambda p: p[x])
                xs, ys = [p[x] for p in points], [100 * p[y] for p in points]
                random = " (random weights)" if weights == "random" else ""
                which = f" [items {(items or '?')[:8]}]" if dataset in mixed else ""
                ax.plot(xs, ys, "o", label=f"{model} / {dataset}{random}{which}")
                for p, xv, yv in zip(points, xs, ys, strict=True):
                    ax.annotate(p["strategy"], (xv, yv), textcoords="offset points", xytext=(4, 3), fontsize=7)
            ax.set_xlabel(x_label)
            ax.set_ylabel(f"{METRIC_LABELS.get(y, y)} (%)")
            ax.grid(alpha=0.3)
    labelled = next((ax for row in axes for ax in row if ax.get_legend_handles_labels()[0]), None)
    if labelled is not None:
        labelled.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return True

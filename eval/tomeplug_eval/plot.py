"""The sweep's plot: fidelity, then accuracy, against encoder GFLOPs and measured speedup (matplotlib, Agg).

One panel per (metric, x) pair. Rows: the task's plotted metrics, fidelity first (mask IoU against the
unmerged model: real whatever the weights), then accuracy. Columns: encoder GFLOPs, then the measured
speedup against ``none`` (ms per image where no row has a speedup). Each run is one point, coloured by run
(its strategy, its schedule where schedules differ, and the parameters that tell it apart, as the table's
``varies``) and shaped by series (model, dataset, weights, and item set where a dataset has several).

With random weights accuracy means nothing: an accuracy panel whose points all come from random weights is
placed last, greyed and titled "(random weights: meaningless)"; random-weight points in another accuracy
panel are faded. Names sit in a legend beside the panels, never on the data, so no text overlaps.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .results import atomic_write
from .tables import METRIC_LABELS, VARIES, in_percent, mixed_item_sets, rows

GFLOPS = ("gflops", "encoder GFLOPs", "GFLOPs")
SPEEDUP = ("speedup", "measured speedup vs none (×)", "speedup")
LATENCY = ("latency_ms", "encoder ms / image", "latency")
"""The x axes: (row key, axis label, name in panel titles)."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
MEANINGLESS = "(random weights: meaningless)"
GREY = "0.45"


def is_fidelity(metric: str) -> bool:
    """Whether a metric measures fidelity to the unmerged model (``fid_iou``, ``fidelity_J``, ``emb_cos``)."""
    return metric.startswith("fid") or metric == "emb_cos"


def _value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def panel_layout(records: Sequence[dict[str, Any]]) -> tuple[list[tuple[str, bool]], list[tuple[str, str, str]]]:
    """The panel rows as (metric, random weights only) and the x axes, in the order they are drawn: fidelity
    metrics, accuracy metrics, random-only accuracy metrics last; GFLOPs, then speedup (else latency)."""
    table = rows(records)
    metrics: dict[str, None] = {}
    for record in records:
        metrics.update(dict.fromkeys(record.get("plot_metrics") or ()))
    present = [m for m in metrics if any(_value(row, m) is not None for row in table)]
    random_only = {
        m: not is_fidelity(m) and all(row["weights"] == "random" for row in table if _value(row, m) is not None)
        for m in present
    }
    ordered = sorted(present, key=lambda m: (not is_fidelity(m), random_only[m]))
    has = {key: any(_value(row, key) is not None for row in table) for key, _, _ in (GFLOPS, SPEEDUP, LATENCY)}
    x_axes = [GFLOPS] if has["gflops"] else []
    x_axes += [SPEEDUP] if has["speedup"] else [LATENCY] if has["latency_ms"] else []
    return [(m, random_only[m]) for m in ordered], x_axes


def _run_names(table: list[dict[str, Any]]) -> list[str]:
    schedules = {row["schedule"] for row in table if row["strategy"] != "none"}
    names = []
    for row in table:
        parts = [row["strategy"], row["schedule"] if len(schedules) > 1 and row["schedule"] != "-" else "", row[VARIES]]
        names.append(" ".join(p for p in parts if p))
    return names


def _series_names(records: Sequence[dict[str, Any]], table: list[dict[str, Any]]) -> list[str]:
    mixed = mixed_item_sets(records)
    names = []
    for row in table:
        random = " (random weights)" if row["weights"] == "random" else ""
        which = f" [items {(row['items'] or '?')[:8]}]" if row["dataset"] in mixed else ""
        names.append(f"{row['model']} / {row['dataset']}{random}{which}")
    return names


def _points(table: list[dict[str, Any]], metric: str, x: str) -> Iterator[tuple[int, float, float, bool]]:
    """(row index, x, y as shown, faded) of every row with both values; random weights fade accuracy."""
    for i, row in enumerate(table):
        xv, yv = _value(row, x), _value(row, metric)
        if xv is not None and yv is not None:
            faded = row["weights"] == "random" and not is_fidelity(metric)
            yield i, xv, 100 * yv if in_percent(metric) else yv, faded


def _label_panel(ax: Any, metric: str, x_axis: tuple[str, str, str], random_only: bool) -> None:
    """Axis labels, title and grid of one panel; greyed where its accuracy comes from random weights only."""
    label = METRIC_LABELS.get(metric, metric)
    ax.set_xlabel(x_axis[1])
    ax.set_ylabel(f"{label} (%)" if in_percent(metric) else label)
    title = f"{label} vs {x_axis[2]}" + (f" {MEANINGLESS}" if random_only else "")
    ax.set_title(title, fontsize=10, color=GREY if random_only else "black")
    ax.grid(alpha=0.3)
    if x_axis == SPEEDUP:
        ax.axvline(1.0, color="0.6", linestyle="--", linewidth=0.8)  # the dense model
    if random_only:
        ax.set_facecolor("0.93")
        ax.xaxis.label.set_color(GREY)
        ax.yaxis.label.set_color(GREY)
        ax.tick_params(colors=GREY)


def figure(records: Sequence[dict[str, Any]]) -> tuple[Any, list[Any]] | None:
    """The plot of ``records`` as a matplotlib figure and its panels (axes) in drawing order; None if nothing
    is plottable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    table = rows(records)
    metrics, x_axes = panel_layout(records)
    if not table or not metrics or not x_axes:
        return None
    runs, series = _run_names(table), _series_names(records, table)
    palette = plt.get_cmap("tab10" if len(set(runs)) <= 10 else "tab20")
    colours = {name: palette(i % 20) for i, name in enumerate(dict.fromkeys(runs))}
    markers = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(dict.fromkeys(series))}
    longest = max(len(name) for name in [*colours, *markers])  # the legend's width
    fig = plt.figure(figsize=(5 * len(x_axes) + 1.2 + 0.07 * longest, 3.8 * len(metrics)), layout="constrained")
    grid = fig.add_gridspec(len(metrics), len(x_axes) + 1, width_ratios=[1] * len(x_axes) + [0.05])
    panels = []
    for i, (metric, random_only) in enumerate(metrics):
        for j, x_axis in enumerate(x_axes):
            ax = fig.add_subplot(grid[i, j])
            for k, xv, yv, faded in _points(table, metric, x_axis[0]):
                colour, marker = colours[runs[k]], markers[series[k]]
                ax.plot(xv, yv, marker, color=colour, alpha=0.35 if faded else 0.9, markersize=7)
            _label_panel(ax, metric, x_axis, random_only)
            panels.append(ax)
    handles = [Line2D([], [], linestyle="", marker="o", color=colour, label=name) for name, colour in colours.items()]
    if len(markers) > 1:
        handles += [Line2D([], [], linestyle="", label="series:")]
        handles += [Line2D([], [], linestyle="", marker=m, color="0.3", label=name) for name, m in markers.items()]
    else:
        fig.suptitle(next(iter(markers)), fontsize=11)
    key = fig.add_subplot(grid[:, -1])  # a column of its own: the legend covers no panel
    key.axis("off")
    key.legend(handles=handles, title="runs", loc="upper left", fontsize=8, title_fontsize=9, frameon=False)
    return fig, panels


def plot(records: Sequence[dict[str, Any]], path: Path) -> bool:
    """Draw the runs of ``records`` to ``path`` (PNG, written atomically); False if nothing is plottable."""
    drawn = figure(records)
    if drawn is None:
        return False
    import matplotlib.pyplot as plt

    fig, _ = drawn
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return True

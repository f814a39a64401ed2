"""Results that explain themselves: sweep rows labelled by what differs, a column legend, peak memory against
the dense run, and a legible plot with the informative panels first (records built directly: fast)."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import pytest
from tiny_models import tiny_sam_encoder

import tomeplug
from tomeplug_eval import plot, tables
from tomeplug_eval.report import write_reports
from tomeplug_eval.run_labels import labels, run_title

ITEMS = "0123456789abcdef"


def blocks(strategy: str, **params: Any) -> dict[str, Any]:
    """``record["blocks"]`` as the runner stores it: a real patch's per-block settings, through JSON."""
    with tomeplug.patch(tiny_sam_encoder(), strategy, **params) as handle:
        return json.loads(json.dumps(handle.to_dict()))


def record(strategy: str = "tome", *, dataset: str = "synthetic", weights: str = "random", peak: float | None = 500.0,
           seconds: float = 1.0, gflops: float = 40.0, fid: float = 0.95, miou: float = 0.3,
           config: dict[str, Any] | None = None, plot_metrics: tuple[str, ...] = ("miou", "fid_iou"),
           metrics: dict[str, float] | None = None, **params: Any) -> dict[str, Any]:  # fmt: skip
    """One run's record with the keys tables and plot read; ``params`` as set on the command line."""
    merged = strategy != "none"
    config = {"dtype": "float32", "batch_size": 1, "output_dir": "out", "progress": False, **(config or {})}
    config |= {"model": {"name": "sam_tiny"}, "dataset": {"name": dataset}, "strategy": {"name": strategy, **params}}
    return {
        "run_key": hashlib.sha1(json.dumps([strategy, dataset, weights, params, config], sort_keys=True).encode())
        .hexdigest()[:16],
        "model": "sam_tiny", "weights": weights, "dataset": dataset, "device": "cpu", "items": ITEMS,
        "strategy": strategy, "layers": None, "params": params if merged else {},
        "blocks": blocks(strategy, **params) if merged else None, "config": config,
        "merging_code": {"source": "c0dec0dec0dec0de", "plugins": {}} if merged else None,
        "metrics": metrics or {"miou": miou, "mbiou": miou - 0.01, "fid_iou": fid, "emb_cos": 0.99},
        "plot_metrics": list(plot_metrics), "latency": {"encoder_s": seconds}, "images": 2,
        "flops": {"gflops": gflops, "ratio": gflops / 50, "overhead_g": 0.01}, "peak_mem_mb": peak,
    }  # fmt: skip


def table_lines(markdown: str) -> list[str]:
    """The table's lines (header first) of a ``results.md``."""
    return [line for line in markdown.splitlines() if line.startswith("|")]


def column(markdown: str, name: str) -> list[str]:
    """The cells of column ``name`` in the markdown table, one per row."""
    head, _, *body = table_lines(markdown)
    index = [c.strip() for c in head.strip("|").split("|")].index(name)
    return [[c.strip() for c in line.strip("|").split(" | ")][index] for line in body]


def test_sweep_rows_are_labelled_by_every_parameter_that_differs():
    records = [
        record("none"),
        record("tome", r=0.25),
        record("tome", r=0.5),
        record("tome", scope="block"),
        record("pitome", margin=0.3),
        record("pitome"),  # the default margin, resolved from the block settings
        record("tome", r=0.25, dataset="smoke"),  # labelled by the same parameters as every row
    ]
    rows = tables.rows(records)
    assert [row["varies"] for row in rows] == [
        "",
        "r=0.25 scope=attn",
        "r=0.5 scope=attn",
        "r=0.5 scope=block",
        "r=0.5 margin=0.3 scope=attn",
        "r=0.5 margin=0.5 scope=attn",
        "r=0.25 scope=attn",
    ]
    markdown = tables.to_markdown(records)
    looks = [line.split(" | ")[:6] for line in table_lines(markdown)[2:]]  # identity and varies
    assert len({json.dumps(cells) for cells in looks}) == len(records)
    assert column(markdown, "varies")[1] == "r=0.25 scope=attn" and column(markdown, "varies")[0] == "-"
    assert "varies" in tables.to_csv(records).splitlines()[0].split(",")

    # a run option (dtype) is a parameter too; one that differs only between datasets (whose rows already
    # look different) is not; a sweep over nothing has no varies column
    assert labels([record("tome"), record("tome", config={"dtype": "bfloat16"})]) == ["dtype=float32", "dtype=bfloat16"]
    assert labels([record("tome", config={"limit": 2}), record("tome", dataset="smoke", config={"limit": 3})]) == [
        "",
        "",
    ]
    assert "varies" not in table_lines(tables.to_markdown([record("none"), record("tome")]))[0]


def test_rows_that_still_look_alike_get_their_run_key():
    same = [record("pitome", margin=0.5), record("pitome")]  # explicit default: other run keys, same settings
    assert tables.schedule_label(same[0]) == tables.schedule_label(same[1])
    first, second = labels(same)
    assert first != second and first.startswith("run=") and second.startswith("run=")


def test_console_title_names_the_swept_parameter_from_the_first_job():
    first = record("tome", r=0.25)
    assert run_title(first, [first]) == "sam_tiny / tome / synthetic (r=0.25)"  # set by the run itself
    second = record("tome", r=0.5)
    assert run_title(second, [first, second]) == "sam_tiny / tome / synthetic (r=0.5)"
    assert run_title(record("none"), [first, second]) == "sam_tiny / none / synthetic"
    scoped = record("tome", scope="span")
    assert run_title(scoped, [first, second, scoped]) == "sam_tiny / tome / synthetic (r=0.5 scope=span)"


def test_results_md_has_a_legend_for_every_column(tmp_path):
    video = {"J": 0.5, "F": 0.6, "J&F": 0.55, "fidelity_J": 0.9, "custom_score": 0.4}
    records = [
        record("none"),
        record("tome", r=0.25),
        record("tome", r=0.5),
        record("tome", dataset="synthetic_video", metrics=video, plot_metrics=("J&F", "fidelity_J")),
    ]
    paths = write_reports(records, tmp_path)
    markdown = paths["markdown"].read_text()
    head = [c.strip() for c in table_lines(markdown)[0].strip("|").split("|")]
    assert {"varies", "peak ×", "items", "J&F", "fidelity_J", "custom_score"} <= set(head)
    legend = markdown.split("\nColumns:\n", 1)[1].splitlines()
    described = {line.split("**")[1]: line.split("**: ", 1)[1] for line in legend if line.startswith("- **")}
    assert list(described) == head  # every column, in table order
    assert all(len(text) > 15 for text in described.values())
    assert described["peak ×"].startswith("peak MB over the matching `none` row's")
    assert described["custom_score"] == "a metric the task reports (% unless a cosine)"
    assert paths["plot"].stat().st_size > 0


def test_peak_ratio_is_against_the_matching_dense_run_and_flags_a_rise():
    records = [
        record("none", peak=1000.0),
        record("tome", peak=1100.0, r=0.25),  # merging raised the peak (a dense global block left)
        record("tome", peak=400.0, r=0.5),
        record("none", peak=600.0, config={"dtype": "bfloat16"}),
        record("tome", peak=300.0, config={"dtype": "bfloat16"}),  # against the bf16 none, not the fp32 one
        record("tome", peak=None, r=0.4),  # not measured
    ]
    rows = tables.rows(records)
    assert [row["peak_ratio"] for row in rows] == pytest.approx([1.0, 1.1, 0.4, 1.0, 0.5, None])
    assert column(tables.to_markdown(records), "peak ×") == ["1.00x", "**1.10x**", "0.40x", "1.00x", "0.50x", "-"]
    other_items = record("tome", peak=900.0)
    other_items["items"] = "fedcba9876543210"
    assert tables.rows([records[0], other_items])[1]["peak_ratio"] is None  # no none row over its items


def drawn_tick_labels(ax) -> list[Any]:
    """The tick labels matplotlib draws: those of ticks inside the view limits."""
    out = []
    for ticks, labels_, (lo, hi) in ((ax.get_xticks(), ax.get_xticklabels(), sorted(ax.get_xlim())),
                                     (ax.get_yticks(), ax.get_yticklabels(), sorted(ax.get_ylim()))):  # fmt: skip
        out += [label for tick, label in zip(ticks, labels_, strict=True) if lo - 1e-9 <= tick <= hi + 1e-9]
    return out


def text_boxes(fig) -> list[tuple[str, Any]]:
    """(name, window extent) of every visible text of ``fig``: tick labels, axis labels, offsets, titles,
    legend entries and titles, the figure's title."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [("suptitle", fig._suptitle)] if fig._suptitle is not None else []
    for i, ax in enumerate(fig.axes):
        axis_texts = [*drawn_tick_labels(ax), ax.xaxis.label, ax.yaxis.label, ax.title]
        axis_texts += [ax.xaxis.get_offset_text(), ax.yaxis.get_offset_text()]
        legend = ax.get_legend()
        if legend is not None:
            axis_texts += [*legend.get_texts(), legend.get_title()]
        texts += [(f"axes {i}: {t.get_text()!r}", t) for t in axis_texts]
    return [(name, t.get_window_extent(renderer)) for name, t in texts if t.get_visible() and t.get_text()]


def overlaps(boxes: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """The pairs of boxes that share more than a pixel square."""
    found = []
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if width > 1 and height > 1:
            found.append((a, b))
    return found


def sweep(weights: str = "random") -> list[dict[str, Any]]:
    """A sweep as the demo's plus r, scope and margin sweeps, over two datasets."""
    out = []
    for dataset in ("synthetic", "smoke"):
        out.append(record("none", dataset=dataset, weights=weights, seconds=12.0, gflops=48.6, fid=1.0))
        for i, strategy in enumerate(["tome", "pitome", "pitome_v1", "pitome_v2", "grad_tome", "tomesd"]):
            kwargs = {"seconds": 5 + 0.3 * i, "gflops": 39.6 + 0.1 * i, "fid": 0.9 + 0.01 * i, "miou": 0.3 + 0.01 * i}
            out.append(record(strategy, dataset=dataset, weights=weights, **kwargs))
        out.append(record("tome", dataset=dataset, weights=weights, r=0.25, seconds=8.0, gflops=44.0, fid=0.97))
        out.append(record("tome", dataset=dataset, weights=weights, scope="span", seconds=4.0, gflops=38.0, fid=0.8))
        out.append(record("pitome", dataset=dataset, weights=weights, margin=0.3, seconds=6.0, fid=0.96))
    return out


def test_plot_is_legible_with_fidelity_gflops_and_speedup_first():
    fig, panels = plot.figure(sweep())
    boxes = text_boxes(fig)
    assert len(boxes) > 40 and overlaps(boxes) == []
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)
    runs = [t.get_text() for t in legend.get_texts()]
    assert "tome r=0.25 scope=attn" in runs and "pitome r=0.5 margin=0.3 scope=attn" in runs  # as the table
    for ax in panels:  # the legend covers no panel
        assert overlaps([("legend", legend.get_window_extent()), ("panel", ax.get_window_extent())]) == []
    first, second = panels[:2]
    assert first.get_ylabel() == second.get_ylabel() == "fid. IoU (%)"
    assert first.get_xlabel() == "encoder GFLOPs" and second.get_xlabel().startswith("measured speedup")
    assert len(first.get_lines()) == len(sweep())  # every run is a point
    none_point = second.get_lines()[0]  # the first run: synthetic's none row, at 1x
    assert (list(none_point.get_xdata()), list(none_point.get_ydata())) == ([1.0], [100.0])

    # the check finds overlapping text when there is some
    crowded = panels[0].text(0.5, 0.5, "crowded"), panels[0].text(0.5, 0.5, "crowded too")
    assert overlaps([(t.get_text(), t.get_window_extent(fig.canvas.get_renderer())) for t in crowded])


def test_random_weights_push_accuracy_panels_last_and_grey_them_out():
    _, panels = plot.figure(sweep("random"))
    titles = [ax.get_title() for ax in panels]
    assert titles == [
        "fid. IoU vs GFLOPs",
        "fid. IoU vs speedup",
        "mIoU vs GFLOPs (random weights: meaningless)",
        "mIoU vs speedup (random weights: meaningless)",
    ]
    for ax in panels:
        greyed = "meaningless" in ax.get_title()
        assert (ax.get_facecolor()[:3] != (1.0, 1.0, 1.0)) == greyed
        assert all(
            line.get_alpha() == (0.35 if greyed else 0.9) for line in ax.get_lines() if line.get_marker() != "None"
        )

    _, real = plot.figure(sweep("checkpoint"))
    assert [ax.get_title() for ax in real] == [t.replace(" (random weights: meaningless)", "") for t in titles]
    assert all(ax.get_facecolor()[:3] == (1.0, 1.0, 1.0) for ax in real)

    mixed = sweep("checkpoint") + [record("tome", dataset="coift", weights="random")]
    _, panels = plot.figure(mixed)
    accuracy = panels[2]  # checkpoint points stay: the panel is not meaningless, the random point is faded
    assert "meaningless" not in accuracy.get_title()
    assert sorted({line.get_alpha() for line in accuracy.get_lines() if line.get_marker() != "None"}) == [0.35, 0.9]


def test_plot_without_a_speedup_uses_latency_and_video_metrics_put_fidelity_first():
    video = {"J": 0.5, "F": 0.6, "J&F": 0.55, "fidelity_J": 0.9}
    runs = [record("tome", r=r, metrics=video, plot_metrics=("J&F", "fidelity_J")) for r in (0.25, 0.5)]
    _, panels = plot.figure(runs)  # no none row: no speedup
    assert [(ax.get_ylabel(), ax.get_xlabel()) for ax in panels] == [
        ("fidelity_J (%)", "encoder GFLOPs"),
        ("fidelity_J (%)", "encoder ms / image"),
        ("J&F (%)", "encoder GFLOPs"),
        ("J&F (%)", "encoder ms / image"),
    ]

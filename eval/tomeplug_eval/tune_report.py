"""What a schedule search found: the chosen schedule, the per-block sensitivity table, the search's path.

``rows`` holds one row per candidate (block x setting) measured alone: the share of the dense encoder's
FLOPs it saves and the fidelity it keeps. ``steps`` is the search's path (greedy: one row per added or
upgraded block, each the combined schedule re-measured). :meth:`TuneReport.to_markdown` renders both,
:func:`plot_report` draws them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import attrs

from .results import atomic_write
from .tune_measure import Measurement, Schedule, schedule_key


def setting_label(setting: dict[str, Any]) -> str:
    """``tome r=0.5 attn`` (plus any other parameters as key=value)."""
    rest = " ".join(f"{k}={v}" for k, v in setting.items() if k not in ("strategy", "r", "scope"))
    return " ".join(x for x in (setting["strategy"], f"r={setting.get('r')}", setting.get("scope", "attn"), rest) if x)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """A markdown table of ``rows`` (dicts) in ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return lines + ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]


@attrs.frozen
class TuneReport:
    """The result of :func:`tomeplug_eval.tune.tune` besides the schedule itself.

    Attributes:
        schedule: ``{block: setting}``, as returned.
        target: ``{"flops": fraction}`` or ``{"speedup": factor}``.
        search: ``"greedy"`` or ``"exhaustive"``, and what it optimised (``objective``).
        fidelity: what fidelity measures here: mask IoU with the model's decoder and embedding cosine, or
            embedding cosine only (and why).
        dense_gflops: the unmerged encoder's GFLOPs per image.
        final: the chosen schedule measured on the calibration images.
        speedup: its measured encoder speedup (speedup targets, or when asked), else None.
        rows: the sensitivity table (one dict per candidate measured alone).
        steps: the search's path.
        validation: the chosen schedule measured on held-out images, or None.
        computed: measurements computed in this call (the rest came from the cache).
    """

    schedule: Schedule
    target: dict[str, float]
    search: str
    objective: str
    fidelity: str
    dense_gflops: float
    final: Measurement
    speedup: float | None
    rows: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    validation: Measurement | None = None
    computed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of everything above."""
        return {
            "schedule": schedule_key(self.schedule),
            "target": self.target,
            "search": self.search,
            "objective": self.objective,
            "fidelity": self.fidelity,
            "dense_gflops": self.dense_gflops,
            "final": self.final.to_dict(),
            "speedup": self.speedup,
            "rows": self.rows,
            "steps": self.steps,
            "validation": None if self.validation is None else self.validation.to_dict(),
            "computed": self.computed,
        }

    def to_markdown(self) -> str:
        """The report as markdown: the result, the sensitivity table and the search's path."""
        target = ", ".join(f"{k} {'<=' if k == 'flops' else '>='} {v}" for k, v in self.target.items())
        chosen = ", ".join(f"{b}: {setting_label(s)}" for b, s in sorted(self.schedule.items())) or "(none)"
        lines = [
            "# Schedule search",
            "",
            f"- target: {target}; search: {self.search} ({self.objective})",
            f"- fidelity: {self.fidelity}",
            f"- schedule: {chosen}",
            f"- result: FLOPs ratio {self.final.flops_ratio:.4f} of {self.dense_gflops:.4g} GFLOPs dense, "
            f"fidelity loss {self.final.loss:.4f}, embedding cosine {self.final.emb_cos:.4f}, "
            f"mask IoU {_cell(self.final.mask_iou)}"
            + ("" if self.speedup is None else f", measured speedup {self.speedup:.3f}x"),
        ]
        if self.validation is not None:
            v = self.validation
            lines.append(
                f"- held-out images: fidelity loss {v.loss:.4f}, embedding cosine {v.emb_cos:.4f}, "
                f"mask IoU {_cell(v.mask_iou)}"
            )
        lines += ["", "## Per-block sensitivity (each candidate alone)", ""]
        columns = ["block", "setting", "flops_saved", "emb_cos", "mask_iou", "loss", "loss_per_flop"]
        lines += markdown_table(self.rows, columns)
        lines += ["", "## Search path (combined schedule re-measured)", ""]
        lines += markdown_table(self.steps, ["step", "change", "blocks", "flops_ratio", "loss", "speedup"])
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Draw the report (:func:`plot_report`) into ``path`` (png, svg, pdf); returns the path."""
        return plot_report(self, path)


def plot_report(report: TuneReport, path: str | Path) -> Path:
    """Two panels: each candidate's fidelity loss against the FLOPs it saves alone (labelled by block), and
    the search's path (loss against the combined schedule's FLOPs ratio), the target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for row in report.rows:
        left.scatter(row["flops_saved"], row["loss"], color="C0", s=18)
        left.annotate(str(row["block"]), (row["flops_saved"], row["loss"]), fontsize=7, xytext=(3, 2),
                      textcoords="offset points")  # fmt: skip
    left.set(xlabel="share of dense FLOPs saved (alone)", ylabel="fidelity loss", title="per-block sensitivity")
    xs = [1.0] + [s["flops_ratio"] for s in report.steps]
    ys = [0.0] + [s["loss"] for s in report.steps]
    right.plot(xs, ys, "o-", color="C1", label=report.search)
    if "flops" in report.target:
        right.axvline(report.target["flops"], color="0.5", linestyle="--", label="FLOPs target")
    right.set(xlabel="FLOPs ratio of the schedule", ylabel="fidelity loss", title="search path")
    right.invert_xaxis()
    right.legend(fontsize=8)
    buffer = io.BytesIO()
    path = Path(path)
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path

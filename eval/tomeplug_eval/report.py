"""Regenerate the sweep's reports from ``results.jsonl``: CSV, markdown table and plot, each atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plot import plot
from .results import atomic_write
from .tables import to_csv, to_markdown


def write_reports(records: Sequence[dict[str, Any]], output_dir: str | Path) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and ``results.png`` for ``records``; returns their paths."""
    output_dir = Path(output_dir)
    paths = {"csv": output_dir / "results.csv", "markdown": output_dir / "results.md"}
    atomic_write(paths["csv"], to_csv(records))
    atomic_write(paths["markdown"], to_markdown(records))
    if plot(records, output_dir / "results.png"):
        paths["plot"] = output_dir / "results.png"
    return paths

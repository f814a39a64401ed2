"""Wall-clock timing: single functions, and interleaved A/B comparisons that cancel slow drifts.

Times are medians of ``repeats`` calls after ``warmup`` untimed ones. On CUDA the device is synchronised
before and after every call, so a time covers the work the call queued, not just its launch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (device-synchronised), and its result."""
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return time.perf_counter() - start, result


def compare(fns: Mapping[str, Callable[[], Any]], warmup: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Time several variants interleaved: every round runs each once, in alternating order (ABBA...).

    A drift (thermal, a neighbour's load) then hits every variant alike instead of the one timed last.
    The first variant is the baseline of the ratios.

    Returns:
        ``median_s`` and ``all_s`` per variant, ``speedup`` (baseline median / variant median) and
        ``last`` (each variant's last result, e.g. to compare outputs).
    """
    if not fns:
        raise ValueError("compare needs at least one function")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, Any] = {}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            elapsed, last[name] = time_call(fns[name])
            times[name].append(elapsed)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians[names[0]]
    return {
        "median_s": medians,
        "all_s": times,
        "speedup": {name: base / m if m > 0 else float("inf") for name, m in medians.items()},
        "last": last,
    }

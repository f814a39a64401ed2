"""In-run speed check: the patched encoder against an unpatched copy of it, timed interleaved.

The runs of a sweep are timed one after another, so a ``speedup`` derived from two runs' latencies is
skewed by whatever else loads the machine in between. With ``speed_rounds: N`` a run also times its
patched encoder and an unpatched deep copy in N interleaved rounds (ABBA..., after ``warmup`` untimed
rounds) on the task's FLOPs input (one image or frame at the model's input size), as ``bench/`` does; the
tables then take the speedup from it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import tomeplug

from .latency import compare


def interleaved_speed(
    encoder: nn.Module,
    inputs: tuple[Any, ...],
    rounds: int,
    warmup: int = 1,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, float]:
    """Time ``encoder`` (patched) and an unpatched copy of it, interleaved, on ``inputs``.

    Returns:
        ``rounds``, the medians ``dense_s`` and ``patched_s``, and ``speedup`` (dense / patched).
    """
    dense = copy.deepcopy(encoder)
    if not tomeplug.unpatch(dense):
        raise ValueError("the encoder is not patched: nothing to compare it with")

    def forward(module: nn.Module) -> Any:
        with torch.no_grad(), autocast():
            return module(*inputs)

    timing = compare(
        {"dense": functools.partial(forward, dense), "patched": functools.partial(forward, encoder)},
        warmup=warmup,
        repeats=rounds,
    )
    dense_s, patched_s = timing["median_s"]["dense"], timing["median_s"]["patched"]
    return {"rounds": rounds, "dense_s": dense_s, "patched_s": patched_s, "speedup": dense_s / patched_s}

"""Encoder FLOPs per (model, encoder, schedule, input size), counted once with fvcore and cached under output_dir.

FLOPs do not depend on the weights or on the image content (merging removes a fixed share of every
attention call's tokens), so one count serves every dataset and every rerun of a schedule: a sweep of
seven strategies over two datasets traces seven forwards, not fourteen. A patched count is also keyed by
the merging code (:mod:`.code_identity`): an edited strategy is counted again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomeplug

from .flops import count_flops
from .results import atomic_write, read_json
from .run_spec import digest


def encoder_flops(
    task: Any, output_dir: Path, model: str, handle: tomeplug.PatchHandle | None, code: Any = None
) -> dict[str, Any]:
    """The FLOP report (``FlopReport.to_dict()``) of the task's encoder as currently patched (None: dense),
    ``code`` being the merging code's identity (``RunSpec.merging_code``)."""
    encoder, inputs = task.flops_input()
    schedule = None if handle is None else {"blocks": handle.to_dict(), "code": code}
    size = sum(p.numel() for p in encoder.parameters())  # one name can build two encoders (hf_sam2_tiny's video neck)
    identity = {"model": model, "encoder": [type(encoder).__name__, size], "schedule": schedule}
    key = digest({**identity, "input": [list(x.shape) for x in inputs]})
    path = Path(output_dir) / "cache" / "flops" / f"{key}.json"
    cached = read_json(path)
    if cached is not None:
        return cached
    report = count_flops(encoder, tuple(x.float() for x in inputs)).to_dict()
    atomic_write(path, json.dumps(report, sort_keys=True))
    return report

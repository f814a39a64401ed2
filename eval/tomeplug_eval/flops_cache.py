"""FLOPs per (model, module, schedule, input size): the encoder and the video memory attention, counted once
with fvcore and cached under output_dir.

FLOPs do not depend on the weights or on the image content (merging removes a fixed share of every
attention call's tokens), so one count serves every dataset and every rerun of a schedule: a sweep of
seven strategies over two datasets traces seven forwards, not fourteen. A patched count is also keyed by
the merging code (:mod:`.code_identity`): an edited strategy is counted again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .flops import count_flops
from .results import atomic_write, read_json
from .run_spec import digest


def encoder_flops(task: Any, output_dir: Path, model: str, handle: Any, code: Any = None) -> dict[str, Any]:
    """The FLOP report (``FlopReport.to_dict()``) of the task's encoder as currently patched (``handle``: the
    run's patch, None: dense), ``code`` being the merging code's identity (``RunSpec.merging_code``)."""
    return module_flops(*task.flops_input(), output_dir, model, handle, code)


def memory_flops(task: Any, output_dir: Path, model: str, handle: Any, code: Any = None) -> dict[str, Any] | None:
    """As :func:`encoder_flops`, for the task's steady-state memory-attention call (None: the task has none)."""
    call = task.memory_flops_input()
    return None if call is None else module_flops(*call, output_dir, model, handle, code)


def module_flops(
    module: Any, inputs: tuple[Any, ...], output_dir: Path, model: str, handle: Any, code: Any = None
) -> dict[str, Any]:
    """The FLOP report of ``module`` on ``inputs`` (counted in float32), cached per model, module, schedule
    and input shapes."""
    schedule = None if handle is None else {"blocks": handle.to_dict(), "code": code}
    size = sum(p.numel() for p in module.parameters())  # one name can build two encoders (hf_sam2_tiny's video neck)
    identity = {"model": model, "encoder": [type(module).__name__, size], "schedule": schedule}
    key = digest({**identity, "input": [list(x.shape) for x in inputs]})
    path = Path(output_dir) / "cache" / "flops" / f"{key}.json"
    cached = read_json(path)
    if cached is not None:
        return cached
    report = count_flops(module, tuple(x.float() for x in inputs)).to_dict()
    atomic_write(path, json.dumps(report, sort_keys=True))
    return report

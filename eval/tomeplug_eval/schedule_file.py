"""Schedule files: a ``{block: setting}`` schedule saved as JSON (by ``tomeplug_eval.tune``), read back anywhere.

The file is a JSON object whose ``layers`` maps block indices (as strings) to settings
(``{"strategy": "tome", "r": 0.5, "scope": "attn"}``); other keys (the target, what was measured) are a
record for the reader. ``tomeplug.patch(model, None, layers=read_schedule(path))`` applies it; the harness
takes it as ``strategy=mix layers=@path``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .results import atomic_write

FILE_PREFIX = "@"
"""How a harness ``layers`` value names a schedule file: ``layers=@path/to/schedule.json``."""


class ScheduleFileError(ValueError):
    """A schedule file is missing, not JSON, or not a ``{"layers": {block: setting}}`` object."""


def write_schedule(path: str | Path, schedule: Mapping[int, Mapping[str, Any]], **record: Any) -> Path:
    """Write ``schedule`` (and JSON-able ``record`` keys beside it) to ``path``; returns the path."""
    path = Path(path)
    layers = {str(block): dict(schedule[block]) for block in sorted(schedule)}
    atomic_write(path, json.dumps({"layers": layers, **record}, indent=2, sort_keys=False) + "\n")
    return path


def read_schedule(path: str | Path) -> dict[int, dict[str, Any]]:
    """The ``{block: setting}`` schedule of a schedule file; errors name the file and what is wrong with it."""
    path = Path(path).expanduser()
    how = 'a schedule file is a JSON object {"layers": {"<block>": {"strategy": NAME, ...}}}, as tune writes'
    if not path.is_file():
        raise ScheduleFileError(f"schedule file {path} not found ({how})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ScheduleFileError(f"schedule file {path} is not valid JSON: {error} ({how})") from error
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise ScheduleFileError(f"schedule file {path} has no non-empty 'layers' object ({how})")
    schedule = {}
    for block, setting in layers.items():
        if not str(block).isdigit() or not isinstance(setting, dict) or not isinstance(setting.get("strategy"), str):
            raise ScheduleFileError(
                f"schedule file {path}: entry {block!r}: {setting!r} is not a block index with a setting naming "
                f"its strategy ({how})"
            )
        schedule[int(block)] = setting
    return dict(sorted(schedule.items()))

"""Results on disk: ``results.jsonl`` (one line per run), per-item caches for resume, atomic writes.

Layout under ``output_dir``::

    results.jsonl              one JSON line per run (model, strategy, schedule, dataset), keyed by run_key
    results.csv, results.md    tables across every run in results.jsonl, regenerated after each run
    results.png                accuracy and fidelity against GFLOPs and latency
    cache/items/<key>/         per-item results, one rank<r>.jsonl per writer (resume skips these items)
    cache/reference/<key>/     the unpatched model's masks and embeddings per item key (fidelity)
    cache/flops/<key>.json     encoder FLOPs per model, schedule and input size

Every whole-file write goes to a temporary file in the same folder and is moved into place with
``os.replace``, under an exclusive lock on ``output_dir/.lock`` (sweep jobs, parallel launchers and
separate invocations may share one output_dir). Item caches are appended line by line, flushed and synced
per item; a torn last line from an interrupted run is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; rank 0 is the only writer of shared files anyway
    fcntl = None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``).

    The file gets the mode a plain ``open`` would give it (0o666 less the umask), not the temporary's 0o600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (a no-op where ``fcntl`` is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a missing file is empty and a torn (unparsable) line is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if line.strip():
                records.append(json.loads(line))
    return records


class ResultsFile:
    """``output_dir/results.jsonl``: one record per run key; adding a key again replaces its line."""

    def __init__(self, output_dir: str | Path) -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / "results.jsonl"

    def records(self) -> list[dict[str, Any]]:
        """Every run recorded so far, in the order they finished."""
        return read_jsonl(self.path)

    def finished(self, run_key: str) -> dict[str, Any] | None:
        """The record of ``run_key`` if that run finished."""
        return next((r for r in self.records() if r.get("run_key") == run_key), None)

    def add(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Add (or replace) ``record`` atomically; returns every record now in the file. Call under :func:`locked`."""
        records = [r for r in self.records() if r.get("run_key") != record["run_key"]] + [record]
        atomic_write(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        return records


class ItemCache:
    """Per-item results of one run, for resume: ``cache/items/<items key>/rank<r>.jsonl``.

    Every rank appends only to its own file and reads all of them, so a run resumed with another number of
    processes still skips every finished item. Each record carries its item's key (``"item"``, the item's
    identity): a record is found by that key, never by its index, so an item that changed is recomputed.
    """

    def __init__(self, output_dir: str | Path, key: str, rank: int = 0) -> None:
        self.dir = Path(output_dir) / "cache" / "items" / key
        self.path = self.dir / f"rank{rank}.jsonl"

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished items by item key (from every writer's file; records without a key are ignored)."""
        done: dict[str, dict[str, Any]] = {}
        for path in sorted(self.dir.glob("rank*.jsonl")):
            for record in read_jsonl(path):
                if "item" in record:
                    done[record["item"]] = record
        return done

    def clear(self) -> None:
        """Forget every finished item of this run (``resume=false``)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def append(self, record: dict[str, Any]) -> None:
        """Append one item's record (with its ``"item"`` key) durably (one line, flushed and synced)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as f:
            torn = False
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"  # an interrupted write left half a line: start a new one
            f.write((("\n" if torn else "") + json.dumps(record, sort_keys=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None

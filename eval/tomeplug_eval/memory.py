"""Peak memory of a block of work: :class:`PeakMemory` (exact on CUDA, sampled resident memory on CPU) and
:class:`LiveTensorPeak` (the tensors the work allocates, counted op by op: deterministic on any device).

- PeakMemory on CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before: the peak of
  tensors the work created (the caching allocator's own reserve is not counted).
- PeakMemory on CPU: glibc's ``malloc_trim(0)`` first hands the memory freed by earlier work back to the system (else it
  would be reused without showing in the resident set); then a background thread samples the process's
  resident set size (``/proc/self/statm``) every ``interval_s`` while the work runs. The peak is the
  highest sample minus the RSS just before: the work's transient working set (weights already resident
  are not counted). Torch ops release the GIL, so the sampler runs during them; a peak shorter than the
  interval can be missed, and re-touching trimmed pages costs page faults (a few percent of a large
  forward's time: the harness meters only the first batch of a run on CPU). Where ``/proc`` is missing
  (macOS), the growth of ``resource.getrusage``'s lifetime maximum is used, a lower bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
import threading
import weakref
from types import TracebackType
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MB = 1024 * 1024


def release_free_memory() -> bool:
    """Return the C heap's free memory to the system (glibc ``malloc_trim``); False where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int | None:
    """The resident set size of this process in bytes, or None where /proc is unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def max_rss_bytes() -> int:
    """The lifetime peak RSS of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Context manager measuring the peak memory the enclosed work adds, in MiB (``peak_mb``).

    Args:
        device: where the work runs; CUDA devices use the allocator's statistics, others sample RSS.
        interval_s: the CPU sampling interval.
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, rss_bytes() or 0)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        release_free_memory()
        current = rss_bytes()
        if current is None:
            self._base = max_rss_bytes()
            return self
        self._base = self._peak = current
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            peak = max_rss_bytes()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, rss_bytes() or 0)
        self.peak_mb = max(0, peak - self._base) / MB


class LiveTensor(NamedTuple):
    """One storage alive at the peak: the op that allocated it, its output's shape and dtype, its bytes, and
    the innermost caller outside torch (``file:line function``)."""

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    where: str


class LiveTensorPeak(TorchDispatchMode):
    """Context manager measuring, deterministically, the peak bytes of tensors the enclosed work allocates.

    Every op's output whose storage is new (not one of the op's inputs' storages: views and in-place ops add
    nothing) is counted from its creation until its storage is freed (a finalizer on the storage). Tensors
    that existed before (weights, inputs) are not counted. The peak and the storages alive at it
    (``at_peak``, largest first) depend only on the work, not on the allocator, the sampling or the machine's
    load; unlike :class:`PeakMemory` on CPU it does not see a kernel's internal scratch buffers nor
    allocator overhead. Runs every op through Python: slower than the bare work (a few percent on large ops).

    Attributes:
        peak_bytes: the highest total of live new storages, in bytes (``peak_mb``: in MiB).
        at_peak: the :class:`LiveTensor` storages alive at that moment.
    """

    def __init__(self) -> None:
        super().__init__()
        self.peak_bytes = 0
        self.at_peak: list[LiveTensor] = []
        self._live: dict[int, LiveTensor] = {}
        self._bytes = 0

    @property
    def peak_mb(self) -> float:
        """The peak in MiB."""
        return self.peak_bytes / MB

    def _free(self, key: int) -> None:
        self._bytes -= self._live.pop(key).nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        grew = False
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in inputs or key in self._live or storage.nbytes() == 0:
                continue
            entry = LiveTensor(str(func.overloadpacket.__name__), tuple(t.shape), t.dtype, storage.nbytes(), _caller())
            self._live[key] = entry
            self._bytes += entry.nbytes
            weakref.finalize(storage, self._free, key)
            grew = True
        if grew and self._bytes > self.peak_bytes:
            self.peak_bytes = self._bytes
            self.at_peak = sorted(self._live.values(), key=lambda e: -e.nbytes)
        return out

    def report(self, top: int = 10) -> str:
        """The peak and its ``top`` largest live storages, one a line."""
        lines = [f"peak {self.peak_mb:.1f} MiB of live tensors, {len(self.at_peak)} storages:"]
        for e in self.at_peak[:top]:
            shape = "x".join(map(str, e.shape))
            dtype = str(e.dtype).removeprefix("torch.")
            lines.append(f"  {e.nbytes / MB:9.1f} MiB  {e.op}  {shape} {dtype}  {e.where}")
        return "\n".join(lines)


def _caller() -> str:
    """``file:line function`` of the innermost frame outside torch and this module."""
    frame = sys._getframe(2)
    skipped = f"{os.sep}torch{os.sep}"
    while frame is not None and (skipped in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"

"""Scale-out with ``torchrun``: one process per rank, each a shard of the items, results gathered on rank 0.

``torchrun --nproc_per_node N eval/harness.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init` joins the process group (gloo on CPU, nccl on CUDA) once per process, so a
hydra multirun reuses it for every job. Rank r evaluates the items ``r, r + N, r + 2N, ...`` (no item twice,
none missed); rank 0 gathers every rank's per-item results with ``gather_object`` and aggregates them in
index order, which gives the numbers of a one-process run. Without ``torchrun`` everything is a no-op.

Every wait for the other ranks (joining, the collectives) gives up after ``timeout_s`` (the harness key
``dist_timeout_s``, default :data:`DEFAULT_TIMEOUT_S`) with an error that names the rank, what it waited
for and the key: a rank that stalled or died does not keep the others waiting for an hour. The final
gather also waits for the slowest shard, so uneven shards need a timeout above their difference in time;
every finished item is cached, so a run that timed out resumes where it stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import attrs
import torch
import torch.distributed as dist

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600.0
"""How long a rank waits for the others by default (seconds)."""
_timeout_s = DEFAULT_TIMEOUT_S  # the value this process joined with, for error messages


@attrs.frozen
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that aggregates and writes results."""
        return self.rank == 0


def world_from_env() -> World:
    """The world ``torchrun`` describes in the environment (a single process without it)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init(device_type: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group if launched by ``torchrun`` (once per process); returns this process's world.

    Args:
        device_type: ``"cuda"`` uses nccl (each rank on ``cuda:<local_rank>``), anything else gloo.
        timeout_s: how long joining and each collective wait for the other ranks before raising.
    """
    global _timeout_s
    world = world_from_env()
    if world.size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        _timeout_s = float(timeout_s)
        with _waiting(world, "to join the process group"):
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(_destroy)
    return world


@contextlib.contextmanager
def _waiting(world: World, what: str) -> Iterator[None]:
    """Turn a failed wait for the other ranks into an error that says what happened and what to change."""
    try:
        yield
    except RuntimeError as error:  # gloo and nccl timeouts and closed connections (DistBackendError)
        raise RuntimeError(
            f"rank {world.rank} of {world.size} gave up waiting {what} (dist_timeout_s={_timeout_s:g}): another "
            "rank stalled or died (see its log), or the shards took too long apart (raise dist_timeout_s). "
            f"Finished items are cached: rerun to resume. Cause: {error}"
        ) from error


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Sequence[T], world: World) -> list[T]:
    """This rank's share of ``indices``: every ``world.size``-th one, starting at ``world.rank``."""
    return list(indices[world.rank :: world.size])


def gather(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the other ranks)."""
    if world.size == 1:
        return [obj]
    out: list[Any] | None = [None] * world.size if world.is_main else None
    with _waiting(world, "to gather every rank's results"):
        dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (so that every rank takes the same decision)."""
    if world.size == 1:
        return obj
    box = [obj if world.is_main else None]
    with _waiting(world, "for rank 0's decision"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.size > 1:
        with _waiting(world, "at a barrier"):
            dist.barrier()

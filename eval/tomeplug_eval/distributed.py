"""Scale-out with ``torchrun``: one process per rank, each a shard of the items, results gathered on rank 0.

``torchrun --nproc_per_node N eval/harness.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init` joins the process group (gloo on CPU, nccl on CUDA) once per process, so a
hydra multirun reuses it for every job. Rank r evaluates the items ``r, r + N, r + 2N, ...`` (no item twice,
none missed); rank 0 gathers every rank's per-item results with ``gather_object`` and aggregates them in
index order, which gives the numbers of a one-process run. Without ``torchrun`` everything is a no-op.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import attrs
import torch
import torch.distributed as dist

T = TypeVar("T")


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


def init(device_type: str = "cpu", timeout_s: float = 3600.0) -> World:
    """Join the process group if launched by ``torchrun`` (once per process); returns this process's world.

    Args:
        device_type: ``"cuda"`` uses nccl (each rank on ``cuda:<local_rank>``), anything else gloo.
        timeout_s: how long collectives wait for the slowest rank (a shard can take long).
    """
    world = world_from_env()
    if world.size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(_destroy)
    return world


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
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (so that every rank takes the same decision)."""
    if world.size == 1:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.size > 1:
        dist.barrier()

"""Evaluation tasks: what evaluating one item means, chosen by the dataset config's ``task`` key.

The runner owns everything around the items (resume, sharding, gathering, FLOPs, results); a task owns
the items themselves. ``task: image`` (SAM, HQ-SAM, SAM 2 on image sets) is :class:`~.image_task.ImageTask`,
``task: video`` (SAM 2 video object segmentation) :class:`~.video_task.VideoTask`; another task is a
:class:`Task` subclass registered in :data:`.runner.TASKS`.

Lifecycle of one job, as the runner drives it::

    task = TaskClass(setup)          # loads the dataset listing (bad paths fail here, before any model)
    len(task)                        # the number of items
    task.item_key(index)             # what an item is (its files' stamps, hashed): keys its caches and the run
    task.model_options(family)       # how to build the model (build_model options)
    task.bind(model, family)         # the built model, unpatched
    task.prepare(todo)               # with the model unpatched: e.g. the reference outputs for fidelity
    # ... the runner patches the model ...
    for record in task.evaluate(todo): ...   # one JSON-able dict per item, with its "index"
    task.summarise(records)          # all ranks' records, in index order -> the run's numbers
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from tqdm import tqdm

from tomeplug import active_patch

from .distributed import World
from .run_spec import RunSpec, digest


class NonFiniteOutputError(FloatingPointError):
    """The image encoder returned NaN or infinite values: the run stops rather than record numbers from them."""


@attrs.frozen
class TaskSetup:
    """What a task is given: the job's config, its resolved identity, where it runs and writes."""

    cfg: Any
    spec: RunSpec
    device: torch.device
    world: World
    output_dir: Path


class Task:
    """Base class of evaluation tasks (see the module docstring for the lifecycle).

    A subclass sets ``self.dataset`` (an indexable dataset with a ``name``) in its ``__init__``.
    """

    name: ClassVar[str] = ""
    unit: ClassVar[str] = "item"
    """What one dataset item is, for progress bars."""
    plot_metrics: ClassVar[tuple[str, ...]] = ()
    """The accuracy metric and the fidelity metric to plot against GFLOPs and latency."""

    def __init__(self, setup: TaskSetup) -> None:
        self.setup = setup
        self.model: nn.Module | None = None
        self.family = ""
        self._item_keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def item_key(self, index: int) -> str:
        """A short hash of item ``index``'s identity (the files it reads, or what generates it): caches of
        per-item outputs are keyed by it, never by the index alone, so a shifted or replaced item is new."""
        if index not in self._item_keys:
            self._item_keys[index] = digest(self.dataset.identity(index))
        return self._item_keys[index]

    def dataset_options(self) -> dict[str, Any]:
        """The dataset loader's options: the dataset config node without its ``name`` and ``task``."""
        return {k: v for k, v in dict(self.setup.cfg.dataset).items() if k not in ("name", "task")}

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's ``dtype`` as autocast (nothing for float32)."""
        dtype = getattr(torch, self.setup.spec.dtype)
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.setup.device.type, dtype=dtype)

    def require_finite(self, output: Any, what: str) -> None:
        """Raise :class:`NonFiniteOutputError` if a floating tensor in ``output`` holds NaN or inf."""
        if all(t.isfinite().all() for t in tree_leaves(output) if torch.is_tensor(t) and t.is_floating_point()):
            return
        spec = self.setup.spec
        model = "the unmerged model" if self.model is None or active_patch(self.model) is None else "the patched model"
        raise NonFiniteOutputError(
            f"{what} holds NaN or infinite values ({model}; run: {spec.model} / {spec.strategy} "
            f"{spec.params}, dtype {self.setup.cfg.dtype}). Nothing is recorded from it. If the strategy is a "
            "plugin's, check it with tomeplug.testing.check_strategy; if a low precision overflowed, use dtype=float32."
        )

    @contextlib.contextmanager
    def finite_outputs(self, module: nn.Module, what: str) -> Iterator[None]:
        """Inside the block, every forward of ``module`` must return finite values (see :meth:`require_finite`)."""
        hook = module.register_forward_hook(lambda _module, _args, output: self.require_finite(output, what))
        try:
            yield
        finally:
            hook.remove()

    @property
    def show_progress(self) -> bool:
        """Whether progress bars are shown: on rank 0 when ``progress`` is on."""
        return bool(self.setup.cfg.progress and self.setup.world.is_main)

    def _progress(self, total: int, what: str) -> tqdm:
        """A tqdm bar over ``total`` items (see :attr:`show_progress`)."""
        spec = self.setup.spec
        desc = f"{what} {spec.model} {spec.strategy} {self.dataset.name}"
        return tqdm(total=total, desc=desc, unit=self.unit, disable=not self.show_progress, dynamic_ncols=True)

    def model_options(self, family: str) -> dict[str, Any]:
        """Options for :func:`~.model_catalog.build_model` (e.g. a video predictor ``target`` for SAM 2)."""
        return {}

    def bind(self, model: nn.Module, family: str) -> None:
        """Take the built (unpatched) model and its family (``sam``, ``hq_sam``, ``sam2``)."""
        self.model, self.family = model, family

    def prepare(self, indices: list[int]) -> None:
        """Work that needs the unpatched model before the patched run (none by default)."""

    def evaluate(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        """Evaluate the items at ``indices`` with the (patched) model: one record per item."""
        raise NotImplementedError

    def summarise(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The run's numbers from every item's record: ``metrics`` and any other top-level entries."""
        raise NotImplementedError

    def flops_input(self) -> tuple[nn.Module, tuple[Any, ...]]:
        """The encoder to count FLOPs of, and one input to trace it with."""
        raise NotImplementedError

    def memory_flops_input(self) -> tuple[nn.Module, tuple[Any, ...]] | None:
        """A memory-attention call to count FLOPs of, with its inputs (SAM 2 video); None: none (the default)."""
        return None

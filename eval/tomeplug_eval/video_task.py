"""Semi-supervised video object segmentation with SAM 2 (``task: video``): J, F, J&F, fidelity, cost per frame.

Protocol per video (SAM 2's ``tools/vos_inference.py``): the model is built as ``SAM2VideoPredictor`` with
image post-processing off (transformers' ``hf_sam2`` models: as ``Sam2VideoModel``, run through its own
processor and inference session by :func:`~.video.hf_vos.run_hf_vos`); every object's first ground-truth
mask is its prompt; masks are propagated to every frame (:func:`~.video.run_vos`) and written as PNGs in the
DAVIS layout under ``<output_dir>/predictions/<items key>/``. Metrics per object
(:func:`~.video.video_record`): J (region IoU), F (boundary F-measure), J&F, and fidelity J against the
unmerged model's masks. The unmerged model's predictions are computed once per (model, weights, data,
protocol) with the model unpatched and kept as PNGs under
``<output_dir>/cache/reference/<reference key>/<item key>/<video>/`` (the baseline run writes its
own there), so every strategy of a sweep compares to them; the item key is the video's identity (its
files' names, sizes and times), so an edited video is never compared with the old one's predictions.
Costs: image-encoder GFLOPs per frame (one frame at the model's ``image_size``; transformers: the
``vision_encoder``, Hiera and its FPN neck), for research SAM 2 models also the memory attention's GFLOPs of
a steady-state frame (:mod:`.video.memory_cost`: a full memory bank) and their sum; the encoder's wall-clock
per frame (total encoder seconds / encoder calls), and each frame's wall-clock split into image encoder,
memory attention and the rest (``latency.split``: total seconds of each / frames). ``memory_layers``
merges the memory attention too (:mod:`.run_spec`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .memory import PeakMemory
from .model_catalog import MODELS
from .tasks import Task, TaskSetup
from .video import load_video_dataset, read_predictions, run_vos, summarize_video_records, video_record
from .video.hf_vos import hf_video_input_size, run_hf_vos
from .video.memory_cost import steady_memory_inputs

VIDEO_PREDICTOR = "sam2.sam2_video_predictor.SAM2VideoPredictor"
METRICS = ("J", "F", "J&F", "fidelity_J")
VIDEO_FAMILIES = ("sam2", "hf_sam2")
"""Model families with a video model: SAM 2 (``SAM2VideoPredictor``), transformers' SAM 2 (``Sam2VideoModel``)."""


class VideoTask(Task):
    """``task: video``: DAVIS 2017, MOSE, SA-V and ``synthetic_video`` with a SAM 2 video model (research or
    transformers)."""

    name = "video"
    unit = "video"
    plot_metrics = ("J&F", "fidelity_J")

    def __init__(self, setup: TaskSetup) -> None:
        super().__init__(setup)
        cfg, spec = setup.cfg, setup.spec
        if MODELS[spec.model].family not in VIDEO_FAMILIES:
            raise ValueError(
                f"video datasets need a SAM 2 model; got {spec.model} (dataset {cfg.dataset.name!r}: use e.g. "
                f"model=sam2.1_hiera_l or hf_sam2.1_hiera_l, or model=sam2_tiny / hf_sam2_tiny for a smoke run)"
            )
        self.dataset = load_video_dataset(str(cfg.dataset.name), cfg.data_root, **self.dataset_options())
        self.reference_dir = Path(setup.output_dir) / "cache" / "reference" / spec.reference_key
        self.prediction_dir = Path(setup.output_dir) / "predictions" / spec.items_key

    def model_options(self, family: str) -> dict[str, Any]:
        """SAM 2: ``SAM2VideoPredictor``; transformers: ``Sam2VideoModel`` with ``model.attn_implementation``."""
        if family == "hf_sam2":
            return {"video": True, "attn_implementation": str(self.setup.cfg.model.get("attn_implementation", "sdpa"))}
        # as vos_inference's build_sam2_video_predictor(apply_postprocessing=False): no image post-processing
        return {"target": VIDEO_PREDICTOR, "sam_mask_decoder_extra_args": None}

    @property
    def encoder(self) -> torch.nn.Module:
        """The image encoder: SAM 2's ``image_encoder``, transformers' ``vision_encoder``."""
        return self.model.vision_encoder if self.family == "hf_sam2" else self.model.image_encoder

    def _run(self, item: Any, output_dir: Path) -> Any:
        """One video through the model (:func:`run_vos` or :func:`run_hf_vos`), its predictions under ``output_dir``."""
        vos = run_hf_vos if self.family == "hf_sam2" else run_vos
        return vos(self.model, item, output_dir=output_dir, progress=self.show_progress)

    def _reference(self, index: int) -> Path:
        """The folder holding the unmerged predictions of item ``index`` (in a subfolder named after the video)."""
        return self.reference_dir / self.item_key(index)

    def _has_reference(self, index: int) -> bool:
        return (self._reference(index) / self.dataset[index].name).is_dir()

    def _save_reference(self, index: int, source: Path | None = None) -> None:
        """The unmerged predictions of item ``index``, moved into the reference cache in one rename."""
        name = self.dataset[index].name
        self._reference(index).mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".ref-", dir=self.reference_dir))
        try:
            if source is None:
                with self.autocast():
                    self._run(self.dataset[index], scratch)
            else:
                shutil.copytree(source / name, scratch / name)
            os.replace(scratch / name, self._reference(index) / name)  # the folder exists only complete
        except OSError:
            if not self._has_reference(index):
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def prepare(self, indices: list[int]) -> None:
        """Predict with the unmerged model the videos whose reference PNGs are missing (not for the baseline)."""
        missing = [] if self.setup.spec.baseline else [i for i in indices if not self._has_reference(i)]
        with self._progress(len(missing), "reference") as bar:
            for index in missing:
                self._save_reference(index)
                bar.update(1)

    def _warmup(self) -> None:
        encoder, frame = self.flops_input()
        with torch.inference_mode(), self.autocast():
            for _ in range(int(self.setup.cfg.warmup)):
                encoder(*frame)

    def evaluate(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        baseline = self.setup.spec.baseline
        if indices:
            self._warmup()
        finite = self.finite_outputs(self.encoder, "the image encoder's output")
        with self._progress(len(indices), "eval") as bar, finite:
            for index in indices:
                item = self.dataset[index]
                with PeakMemory(self.setup.device) as meter, self.autocast():
                    result = self._run(item, self.prediction_dir)
                if baseline and not self._has_reference(index):
                    self._save_reference(index, source=self.prediction_dir)
                reference = result.masks if baseline else read_predictions(self._reference(index), item)
                record = video_record(item, result, index=index, reference=reference)
                record["peak_mem_mb"] = meter.peak_mb
                yield record
                bar.update(1)

    def summarise(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        summary = summarize_video_records(records)
        nan = float("nan")
        return {
            "metrics": {m: nan if summary[m] is None else summary[m] for m in METRICS},
            "videos": summary["videos"],
            "frames": summary["frames"],
            "objects": summary["objects"],
            "unscored_objects": summary["unscored_objects"],
            "latency": {
                "encoder_s": summary["encoder_s_per_frame"],
                "per": "frame",
                "samples": sum(r["encoder_calls"] for r in records),
                "seconds_per_frame": summary["seconds_per_frame"],
                "split": summary["split_per_frame"],
            },
            "peak_mem_mb": max((r["peak_mem_mb"] for r in records if r.get("peak_mem_mb") is not None), default=None),
        }

    def flops_input(self) -> tuple[torch.nn.Module, tuple[Any, ...]]:
        model = self.model
        size = hf_video_input_size(model) if self.family == "hf_sam2" else int(model.image_size)
        device = next(model.parameters()).device
        return self.encoder, (torch.zeros(1, 3, size, size, device=device),)

    def memory_flops_input(self) -> tuple[torch.nn.Module, tuple[Any, ...]] | None:
        """Research SAM 2: one steady-state memory-attention call (a full memory bank, one object); else None."""
        return steady_memory_inputs(self.model) if self.family == "sam2" else None

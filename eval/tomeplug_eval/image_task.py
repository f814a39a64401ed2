"""Box-prompted image segmentation, as HQ-SAM evaluates SAM: accuracy, fidelity, latency, memory per image.

Protocol per item: the image and its masks are resized to the encoder's input (1024x1024 for the official
models; HQ-SAM's stretch, or SAM's longest-side resize and pad with ``keep_aspect=true``); one tight box
prompt per object from its resized ground truth; the image encoder runs once per image (``batch_size``
images per forward); single-mask output; the mask logits are upsampled to the original size and
thresholded at 0. Metrics at the original size, per object: mask IoU and boundary IoU against the ground
truth, mask IoU against the unmerged model (fidelity); per image: the cosine of the image embeddings with
the unmerged model's, the encoder's wall-clock (per image of its batch) and peak memory.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .data import ImageItem, load_dataset
from .latency import time_call
from .memory import PeakMemory
from .metrics import MeanAccumulator, boundary_iou, embedding_cosine, mask_iou
from .model_catalog import MODELS
from .prompts import box_from_mask, resize_item
from .reference import Reference, ReferenceCache
from .segmenters import Segmenter, make_segmenter
from .tasks import Task, TaskSetup


def object_box(resized: np.ndarray, original: np.ndarray) -> np.ndarray:
    """The tight box of a resized mask; if resizing erased a tiny object, its original box scaled."""
    if resized.any():
        return box_from_mask(resized)
    scale = np.array([resized.shape[1] / original.shape[1], resized.shape[0] / original.shape[0]] * 2, np.float32)
    return box_from_mask(original) * scale


class ImageTask(Task):
    """``task: image``: SAM, HQ-SAM, SAM 2 and SAM 3 with one box per object (see the module docstring)."""

    name = "image"
    unit = "img"
    plot_metrics = ("miou", "fid_iou")

    def __init__(self, setup: TaskSetup) -> None:
        super().__init__(setup)
        cfg = setup.cfg
        self.dataset = load_dataset(cfg.dataset.name, cfg.data_root, **self.dataset_options())
        self.references = ReferenceCache(setup.output_dir, setup.spec.reference_key)
        self.segmenter: Segmenter | None = None
        if cfg.keep_aspect and MODELS[setup.spec.model].family in (
            "sam2",
            "sam3",
            "hf_sam2",
            "hf_sam3",
            "ultralytics_sam2",
        ):
            raise ValueError("keep_aspect=true is SAM's resize; SAM 2 and SAM 3 take a square (stretched) input")

    def model_options(self, family: str) -> dict[str, Any]:
        """transformers models: the model config's ``attn_implementation`` (``sdpa`` or ``eager``)."""
        if family.startswith("hf_"):
            return {"attn_implementation": str(self.setup.cfg.model.get("attn_implementation", "sdpa"))}
        return {}

    def bind(self, model: torch.nn.Module, family: str) -> None:
        super().bind(model, family)
        self.segmenter = make_segmenter(model, family, hq_token_only=self.setup.cfg.model.get("hq_token_only", True))

    def _batches(self, indices: list[int]) -> Iterator[list[int]]:
        size = int(self.setup.cfg.batch_size)  # >= 1: checked by run_spec.resolve
        for start in range(0, len(indices), size):
            yield indices[start : start + size]

    def _predict(
        self, items: list[ImageItem], warmup: int = 0, metered: bool = False
    ) -> tuple[list[Reference], float, float | None]:
        """Masks and embeddings for a batch; the encoder's seconds per image and (if metered) its peak MiB."""
        seg, keep_aspect = self.segmenter, bool(self.setup.cfg.keep_aspect)
        resized = [resize_item(item, seg.input_size, keep_aspect) for item in items]
        with torch.no_grad(), self.autocast():
            batch = seg.preprocess([r.image for r in resized])
            for _ in range(warmup):
                seg.encode(batch)
            meter = PeakMemory(self.setup.device) if metered else contextlib.nullcontext()
            with meter:
                seconds, features = time_call(lambda: seg.encode(batch))
            self.require_finite(features, f"the image encoder's output for {', '.join(i.name for i in items)}")
            outputs = []
            for i, (item, small) in enumerate(zip(items, resized, strict=True)):
                boxes = np.stack([object_box(s, o) for s, o in zip(small.masks, item.masks, strict=True)])
                logits = seg.decode(features, i, boxes, small.size, item.size)
                embedding = seg.embedding(features, i).float().cpu().numpy()
                outputs.append(Reference((logits > 0).cpu().numpy(), embedding))
        return outputs, seconds / len(items), meter.peak_mb if metered else None

    def prepare(self, indices: list[int]) -> None:
        """Compute the unmerged model's missing reference outputs (not needed by the baseline itself)."""
        missing = [] if self.setup.spec.baseline else [i for i in indices if self.item_key(i) not in self.references]
        with self._progress(len(missing), "reference") as bar:
            for chunk in self._batches(missing):
                outputs, _, _ = self._predict([self.dataset[i] for i in chunk])
                for index, output in zip(chunk, outputs, strict=True):
                    self.references.save(self.item_key(index), output)
                bar.update(len(chunk))

    def evaluate(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        dilation, baseline = float(self.setup.cfg.boundary_dilation), self.setup.spec.baseline
        warmup, cuda = int(self.setup.cfg.warmup), self.setup.device.type == "cuda"
        with self._progress(len(indices), "eval") as bar:
            for n, chunk in enumerate(self._batches(indices)):
                items = [self.dataset[i] for i in chunk]
                outputs, seconds, peak_mb = self._predict(items, warmup if n == 0 else 0, metered=cuda or n == 0)
                for index, item, output in zip(chunk, items, outputs, strict=True):
                    key = self.item_key(index)
                    if baseline and key not in self.references:
                        self.references.save(key, output)
                    ref = output if baseline else self.references.load(key)
                    yield {
                        "index": index,
                        "name": item.name,
                        "iou": [mask_iou(p, g) for p, g in zip(output.masks, item.masks, strict=True)],
                        "biou": [boundary_iou(p, g, dilation) for p, g in zip(output.masks, item.masks, strict=True)],
                        "fid_iou": [mask_iou(p, r) for p, r in zip(output.masks, ref.masks, strict=True)],
                        "emb_cos": float(embedding_cosine(output.embedding[None], ref.embedding[None])[0]),
                        "encoder_s": seconds,
                        "peak_mem_mb": peak_mb,
                    }
                bar.update(len(chunk))

    def summarise(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        acc = MeanAccumulator()
        for record in records:
            for name, key in (("miou", "iou"), ("mbiou", "biou"), ("fid_iou", "fid_iou")):
                acc.extend(name, record[key])
            acc.add(emb_cos=record["emb_cos"])
        return {
            "metrics": {name: acc.mean(name) for name in ("miou", "mbiou", "fid_iou", "emb_cos")},
            "images": len(records),
            "objects": acc.count("miou"),
            "latency": {"encoder_s": statistics.median(r["encoder_s"] for r in records), "samples": len(records)},
            "peak_mem_mb": max((r["peak_mem_mb"] for r in records if r["peak_mem_mb"] is not None), default=None),
        }

    def flops_input(self) -> tuple[torch.nn.Module, tuple[Any, ...]]:
        seg = self.segmenter
        item = resize_item(self.dataset[0], seg.input_size, bool(self.setup.cfg.keep_aspect))
        return seg.encoder, (seg.preprocess([item.image]),)

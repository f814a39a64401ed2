"""Evaluation data: images with object masks, as indexable datasets (HQ-SAM sets, synthetic, smoke)."""

from .catalog import ALIASES, DATASETS, list_datasets, load_dataset
from .hqsam_layout import LAYOUTS, HQSAMDataset, HQSAMLayout
from .item import ImageDataset, ImageItem, LazyDataset
from .smoke import smoke_dataset
from .synthetic import SyntheticDataset

__all__ = [
    "ALIASES",
    "DATASETS",
    "LAYOUTS",
    "HQSAMDataset",
    "HQSAMLayout",
    "ImageDataset",
    "ImageItem",
    "LazyDataset",
    "SyntheticDataset",
    "list_datasets",
    "load_dataset",
    "smoke_dataset",
]

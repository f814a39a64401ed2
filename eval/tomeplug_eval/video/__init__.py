"""Video evaluation: DAVIS / MOSE / SA-V loaders, a generated set, J&F metrics and semi-supervised VOS with SAM 2
(``SAM2VideoPredictor``: :func:`run_vos`; transformers' ``Sam2VideoModel``: :func:`run_hf_vos`)."""

from .catalog import VIDEO_ALIASES, VIDEO_DATASETS, list_video_datasets, load_video_dataset
from .davis import DAVISDataset
from .hf_vos import run_hf_vos
from .item import Masks, VideoDataset, VideoItem
from .metrics import boundary_f, boundary_map, boundary_radius, mean_scores, region_j, score_video, scored_frames
from .png_io import davis_palette, read_id_png, read_predictions, write_predictions
from .records import summarize_video_records, video_record
from .sav import SAVDataset
from .synthetic import synthetic_video
from .vos import EncoderTimer, VOSResult, fidelity_j, run_vos

__all__ = [
    "VIDEO_ALIASES",
    "VIDEO_DATASETS",
    "DAVISDataset",
    "EncoderTimer",
    "Masks",
    "SAVDataset",
    "VOSResult",
    "VideoDataset",
    "VideoItem",
    "boundary_f",
    "boundary_map",
    "boundary_radius",
    "davis_palette",
    "fidelity_j",
    "list_video_datasets",
    "load_video_dataset",
    "mean_scores",
    "read_id_png",
    "read_predictions",
    "region_j",
    "run_hf_vos",
    "run_vos",
    "scored_frames",
    "score_video",
    "summarize_video_records",
    "synthetic_video",
    "video_record",
    "write_predictions",
]

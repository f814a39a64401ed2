"""Semi-supervised VOS through a tiny official SAM2VideoPredictor on synthetic_video, patched and unpatched."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import tiny_sam2

import tomeplug
from tomeplug_eval.video import (
    SAVDataset,
    VideoItem,
    read_id_png,
    read_predictions,
    run_vos,
    summarize_video_records,
    synthetic_video,
    video_record,
)
from tomeplug_eval.video.png_io import write_palette_png

VIDEO = "sam2.sam2_video_predictor.SAM2VideoPredictor"
SCORES = ("J", "F", "J&F", "fidelity_J", "objects", "unscored_objects", "videos", "frames")


def same_masks(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[f].keys() == b[f].keys() and all(np.array_equal(a[f][o], b[f][o]) for o in a[f]) for f in a
    )


@pytest.fixture(scope="module")
def base_predictor():
    return tiny_sam2(target=VIDEO)


@pytest.fixture
def predictor(base_predictor):
    return copy.deepcopy(base_predictor)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_video(count=3, frames=4, size=(48, 64), seed=3, cache_dir=tmp_path_factory.mktemp("cache"))


def test_unpatched_run_predicts_every_frame_and_writes_davis_pngs(predictor, dataset, tmp_path: Path):
    item = dataset[0]
    result = run_vos(predictor, item, output_dir=tmp_path)
    assert sorted(result.masks) == list(range(item.num_frames))
    for objects in result.masks.values():
        assert sorted(objects) == item.object_ids
        assert all(m.dtype == np.bool_ and m.shape == item.size for m in objects.values())
    assert len(result.encoder_seconds) == item.num_frames  # one image-encoder forward per frame
    assert all(s > 0 for s in result.encoder_seconds) and result.seconds >= sum(result.encoder_seconds)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert written == [f"{item.name}/{name}.png" for name in item.frame_names]
    for frame, objects in result.masks.items():
        ids = read_id_png(tmp_path / item.name / f"{item.frame_names[frame]}.png")
        assert all(np.array_equal(ids == obj, mask) for obj, mask in objects.items())
    assert same_masks(read_predictions(tmp_path, item), result.masks)  # the PNGs are a lossless cache
    baseline = video_record(item, result, index=0, reference=result.masks)
    assert all(o["fidelity_J"] == 1.0 for o in baseline["objects"].values())
    assert predictor.non_overlap_masks is False  # set for the run only


def test_patched_and_unpatched_both_run_and_the_encoder_merges(predictor, dataset):
    item = dataset[1]
    reference = run_vos(predictor, item)
    tomeplug.patch(predictor, "tome", r=0.5)
    tokens = []  # tokens per 8x8 window in block 0's qkv: 64 unmerged
    qkv = predictor.image_encoder.trunk.blocks[0].attn.qkv
    hook = qkv.register_forward_hook(lambda m, a, out: tokens.append(a[0].shape[1]))
    merged = run_vos(predictor, item)
    hook.remove()
    assert tokens and set(tokens) == {32} and len(tokens) == item.num_frames
    assert sorted(merged.masks) == sorted(reference.masks)
    assert all(sorted(merged.masks[f]) == sorted(reference.masks[f]) for f in merged.masks)
    tomeplug.unpatch(predictor)
    assert same_masks(run_vos(predictor, item).masks, reference.masks)


def test_an_object_appearing_later_gets_its_own_pass(predictor, dataset):
    item = dataset[2]
    first = item.object_ids[0]
    masks = {
        f: {1: objects[first], 2: objects[first] if f >= 2 else np.zeros(item.size, bool)}
        for f, objects in item.masks.items()
    }
    late = VideoItem(item.name, item.frame_paths, masks, prompts={1: 0, 2: 2}, size=item.size)
    result = run_vos(predictor, late)
    assert len(result.encoder_seconds) == 4 + 2  # frames 0..3 for object 1, then 2..3 for object 2
    assert all(sorted(objects) == [1, 2] for objects in result.masks.values()) and sorted(result.masks) == [0, 1, 2, 3]
    assert not result.masks[0][2].any() and not result.masks[1][2].any()  # not tracked before its prompt
    assert not any((objects[1] & objects[2]).any() for objects in result.masks.values())  # one id per pixel


def test_records_shard_and_merge_exactly(predictor, dataset, tmp_path: Path):
    """As the video task runs: the unmerged model's PNGs first, then each shard's patched videos scored on them."""
    for index in range(len(dataset)):
        run_vos(predictor, dataset[index], output_dir=tmp_path / "reference")
    tomeplug.patch(predictor, "tome", r=0.5)

    def record(index: int) -> dict:
        item = dataset[index]
        result = run_vos(predictor, item, output_dir=tmp_path / "predictions")
        return video_record(item, result, index=index, reference=read_predictions(tmp_path / "reference", item))

    whole = [record(index) for index in range(len(dataset))]
    shards = [[record(index) for index in range(rank, len(dataset), 2)] for rank in (1, 0)]
    merged = sorted((r for shard in shards for r in shard), key=lambda r: r["index"])
    assert [r["index"] for r in merged] == [0, 1, 2] and [r["name"] for r in merged] == dataset.names
    for one, other in zip(whole, merged, strict=True):
        assert one["objects"] == other["objects"] and one["frames"] == other["frames"] == 4
        assert one["encoder_calls"] == 4 and one["annotated_frames"] == 4
    summary, from_shards = summarize_video_records(whole), summarize_video_records(merged[::-1])
    assert {k: summary[k] for k in SCORES} == {k: from_shards[k] for k in SCORES}
    objects = [o for r in whole for o in r["objects"].values()]
    assert summary["J"] == math.fsum(o["J"] for o in objects) / len(objects)  # sum, then mean: exact
    assert all(0 <= o["J"] <= 1 and 0 <= o["F"] <= 1 and 0 <= o["fidelity_J"] <= 1 for o in objects)
    assert all(o["frames"] == 2 and o["prompt_frame"] == 0 for o in objects)  # 4 frames, first and last dropped
    assert summary["encoder_s_per_frame"] > 0 and summary["videos"] == 3 and summary["frames"] == 12


def test_sav_item_writes_one_png_per_object(predictor, dataset, tmp_path: Path):
    """An SA-V layout built from a synthetic sequence: annotations on every 2nd frame, one PNG per object."""
    item = dataset[0]
    root = tmp_path / "sav_val"
    shutil.copytree(item.frame_dir, root / "JPEGImages_24fps" / "vid")
    for frame in range(0, item.num_frames, 2):
        for obj, mask in item.masks[frame].items():
            write_palette_png(root / "Annotations_6fps" / "vid" / f"{obj - 1:03d}" / f"{frame:05d}.png", mask)
    sav_item = SAVDataset(root)[0]
    assert sav_item.per_object_png and sav_item.annotated_frames == [0, 2]
    predictor.non_overlap_masks = True
    result = run_vos(predictor, sav_item, output_dir=tmp_path / "out")
    assert predictor.non_overlap_masks is True  # restored after the run (overlaps allowed during it)
    objects = [f"{obj:03d}" for obj in sav_item.object_ids]
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == sorted(f"vid/{o}/{n}.png" for o in objects for n in sav_item.frame_names)
    assert sorted(result.masks[1]) == sav_item.object_ids
    assert same_masks(read_predictions(tmp_path / "out", sav_item), result.masks)


@pytest.mark.parametrize("progress", [True, False])
def test_sam2_progress_bars_follow_the_progress_option(predictor, dataset, capsys, progress):
    first = run_vos(predictor, dataset[0], progress=progress)
    err = capsys.readouterr().err
    assert ("propagate in video" in err) == progress and ("frame loading" in err) == progress
    assert same_masks(run_vos(predictor, dataset[0]).masks, first.masks)  # the bars change nothing else

"""Video loaders on generated folders in the real DAVIS, MOSE and SA-V layouts, their errors, synthetic_video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from video_folders import H, W, id_map, write_davis, write_sav

from tomeplug_eval.video import (
    DAVISDataset,
    SAVDataset,
    load_video_dataset,
    read_id_png,
    synthetic_video,
    write_predictions,
)
from tomeplug_eval.video.png_io import write_palette_png


def test_davis_480p_layout(tmp_path: Path):
    write_davis(tmp_path, ["bike", "cat"])
    dataset = load_video_dataset("davis2017", tmp_path)
    assert isinstance(dataset, DAVISDataset) and len(dataset) == 2 and dataset.names == ["bike", "cat"]
    item = dataset[1]
    assert item.name == "cat" and item.num_frames == 4 and item.size == (H, W) and not item.per_object_png
    assert item.frame_dir == tmp_path / "JPEGImages" / "480p" / "cat" and item.frame_names[-1] == "00003"
    assert item.annotated_frames == [0, 1, 2, 3] and item.object_ids == [1, 2]
    assert item.prompts == {1: 0, 2: 2}  # object 2 first appears on frame 2
    assert np.array_equal(item.masks[3][1], id_map(3) == 1) and not item.masks[0][2].any()
    assert sorted(item.void) == [0, 1, 2, 3] and item.void[0].sum() == 1  # 255: void, not an object


def test_mose_flat_layout_first_frame_only(tmp_path: Path):
    write_davis(tmp_path, ["b", "a"], frames=5, nested=False, annotated=1)  # MOSE valid: first frame annotated
    dataset = load_video_dataset("mose", tmp_path)
    assert dataset.names == ["a", "b"] and dataset.title == "MOSE"
    item = dataset[0]
    assert item.num_frames == 5 and item.annotated_frames == [0] and item.prompts == {1: 0}


def test_resolution_is_detected_or_configured(tmp_path: Path):
    write_davis(tmp_path, ["s"], nested=True)
    assert DAVISDataset(tmp_path, resolution="480p")[0].num_frames == 4
    with pytest.raises(FileNotFoundError, match="Full-Resolution"):
        DAVISDataset(tmp_path, resolution="Full-Resolution")


def test_sav_layout_per_object_pngs_at_6fps(tmp_path: Path):
    write_sav(tmp_path)
    dataset = load_video_dataset("sav", tmp_path, split="sav_val")
    assert isinstance(dataset, SAVDataset) and dataset.names == ["sav_000001"]
    item = dataset[0]
    assert item.num_frames == 13 and item.annotated_frames == [0, 4, 8, 12] and item.per_object_png
    assert item.prompts == {0: 0, 1: 0} and (item.masks[4][0] & item.masks[4][1]).any()  # objects overlap


def _error_cases() -> dict[str, tuple]:
    def listed_but_absent(root: Path) -> None:
        write_davis(root, ["a"])
        (root / "ImageSets" / "2017" / "val.txt").write_text("a\nghost\n")

    def orphan_annotation(root: Path) -> None:
        write_davis(root, ["a"])
        write_palette_png(root / "Annotations" / "480p" / "a" / "00009.png", id_map(0))

    def rgb_png(root: Path) -> None:
        write_davis(root, ["a"])
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "Annotations" / "480p" / "a" / "00001.png")

    def odd_size(root: Path) -> None:
        write_davis(root, ["a"])
        write_palette_png(root / "Annotations" / "480p" / "a" / "00001.png", np.zeros((H, W + 1), np.uint8))

    def binary_0_255(root: Path) -> None:
        write_davis(root, ["a"], annotated=0)
        write_palette_png(root / "Annotations" / "480p" / "a" / "00000.png", id_map(0) * 0 + 255 * (id_map(0) == 1))

    def named_frames(root: Path) -> None:
        write_davis(root, ["a"])
        (root / "JPEGImages" / "480p" / "a" / "00001.jpg").rename(root / "JPEGImages" / "480p" / "a" / "frame.jpg")

    def no_list(root: Path) -> None:
        write_davis(root, ["a"])
        (root / "ImageSets" / "2017" / "val.txt").unlink()

    return {
        "missing data_root": (lambda r: None, "data_root not found", FileNotFoundError),
        "missing folders": (lambda r: (r / "JPEGImages").mkdir(), "Annotations", FileNotFoundError),
        "no sequence list": (no_list, "val.txt", FileNotFoundError),
        "listed but absent": (listed_but_absent, "ghost", FileNotFoundError),
        "annotation without frame": (orphan_annotation, "00009.png", ValueError),
        "rgb annotation": (rgb_png, "mode 'RGB'", ValueError),
        "mismatched size": (odd_size, r"\(24, 33\)", ValueError),
        "no object ids": (binary_0_255, "no object ids", ValueError),
        "frames not numbered": (named_frames, "frame.jpg", ValueError),
    }


@pytest.mark.parametrize("case", sorted(_error_cases()))
def test_davis_errors_name_the_problem(tmp_path: Path, case: str):
    make, match, error = _error_cases()[case]
    root = tmp_path / "root"
    if case != "missing data_root":
        root.mkdir()
    make(root)
    with pytest.raises(error, match=match):
        DAVISDataset(root)[0]


@pytest.mark.parametrize("case", ["objects on other frames", "two values", "files not folders", "no list"])
def test_sav_errors_name_the_problem(tmp_path: Path, case: str):
    write_sav(tmp_path)
    video = tmp_path / "Annotations_6fps" / "sav_000001"
    match, split = {"objects on other frames": "other frames", "two values": "more than one object"}.get(case), None
    if case == "objects on other frames":
        (video / "001" / "00004.png").unlink()
    elif case == "two values":
        write_palette_png(video / "000" / "00004.png", np.arange(H * W, dtype=np.uint8).reshape(H, W) % 3)
    elif case == "files not folders":
        write_palette_png(video / "00000.png", np.zeros((H, W), np.uint8))
        match = "one folder per object"
    else:
        split, match = "sav_test", "sav_test.txt"
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        SAVDataset(tmp_path, split=split)[0]


def test_catalog_names_and_errors():
    with pytest.raises(ValueError, match="needs data_root"):
        load_video_dataset("davis")
    with pytest.raises(ValueError, match="'sav' needs data_root"):  # names are case-free, aliases resolved
        load_video_dataset("SA-V")
    with pytest.raises(ValueError, match="unknown video dataset 'coift'"):
        load_video_dataset("coift")
    with pytest.raises(ValueError, match="synthetic_video"):
        load_video_dataset("davis2016")


def test_predictions_written_in_each_layout(tmp_path: Path):
    a, b = np.zeros((H, W), bool), np.zeros((H, W), bool)
    a[2:8, 2:8], b[5:12, 5:12] = True, True
    write_predictions(tmp_path, "seq", ["00000", "00001"], {1: {1: a, 2: b}}, per_object=False)
    with Image.open(tmp_path / "seq" / "00001.png") as png:
        assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]
    ids = read_id_png(tmp_path / "seq" / "00001.png")
    assert np.array_equal(ids == 1, a) and np.array_equal(ids == 2, b & ~a)  # the lowest id wins overlaps
    write_predictions(tmp_path, "vid", ["00000"], {0: {0: a, 1: b}}, per_object=True)
    assert np.array_equal(read_id_png(tmp_path / "vid" / "001" / "00000.png"), b.astype(np.uint8))


def test_synthetic_video_is_deterministic_and_cached(tmp_path: Path):
    first = synthetic_video(count=3, frames=4, size=48, seed=7, cache_dir=tmp_path / "a")
    again = synthetic_video(count=3, frames=4, size=48, seed=7, cache_dir=tmp_path / "b")
    other = synthetic_video(count=3, frames=4, size=48, seed=8, cache_dir=tmp_path / "a")
    files = sorted(p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert all((first.root / f).read_bytes() == (again.root / f).read_bytes() for f in files)
    assert first[0].frame_paths[0].read_bytes() != other[0].frame_paths[0].read_bytes()
    stamp = (first.root / files[0]).stat().st_mtime_ns
    assert synthetic_video(count=3, frames=4, size=48, seed=7, cache_dir=tmp_path / "a").root == first.root
    assert (first.root / files[0]).stat().st_mtime_ns == stamp  # reused, not rewritten
    for item in first:
        assert item.size == (48, 48) and item.num_frames == 4 and 1 <= len(item.object_ids) <= 3
        assert set(item.prompts.values()) == {0} and all(m.any() for m in item.masks[0].values())
    with pytest.raises(ValueError, match="frames >= 3"):
        synthetic_video(frames=2, cache_dir=tmp_path)

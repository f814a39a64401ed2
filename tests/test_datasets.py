"""Datasets on generated folders in their real layouts, the synthetic and smoke sets, and prompts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tomeplug_eval.data import LAYOUTS, ImageItem, SyntheticDataset, list_datasets, load_dataset, smoke_dataset
from tomeplug_eval.data import smoke as smoke_module
from tomeplug_eval.data.synthetic import SHAPES
from tomeplug_eval.prompts import box_from_mask, longest_side_shape, resize_item


def write_pair(root: Path, key: str, stem: str, gt: np.ndarray, grey: bool = False) -> np.ndarray:
    """Write one image (jpg) and its ground truth (png) where HQ-SAM keeps them; return the image."""
    layout = LAYOUTS[key]
    for rel in (layout.images, layout.masks):
        (root / rel).mkdir(parents=True, exist_ok=True)
    h, w = gt.shape[:2]
    pixels = np.random.default_rng(len(stem)).integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / layout.images / f"{stem}.jpg")
    Image.fromarray(gt).save(root / layout.masks / f"{stem}.png")
    return pixels


def gt_values(h: int = 12, w: int = 16) -> np.ndarray:
    gt = np.zeros((h, w), np.uint8)
    gt[2:6, 3:9] = 255
    gt[7, 0] = 129  # foreground: > 128
    gt[8, 0] = 128  # background, as HQ-SAM thresholds
    return gt


@pytest.mark.parametrize("key", sorted(LAYOUTS))
def test_hqsam_folder_loads(tmp_path: Path, key: str):
    gt = gt_values()
    write_pair(tmp_path, key, "b_second", np.repeat(gt[..., None], 3, axis=2))  # RGB mask: first channel
    write_pair(tmp_path, key, "a_first", gt, grey=True)
    (tmp_path / LAYOUTS[key].masks / "orphan.png").write_bytes(b"")  # masks without an image are ignored
    ds = load_dataset(key, data_root=tmp_path)
    assert len(ds) == 2 and ds.name == key
    first, second = ds[0], ds[-1]
    assert (first.name, second.name) == ("a_first", "b_second")
    assert first.image.shape == (12, 16, 3) and first.image.dtype == np.uint8
    for item in (first, second):
        assert len(item.masks) == 1
        np.testing.assert_array_equal(item.masks[0], gt > 128)
    assert [item.name for item in ds] == ["a_first", "b_second"]


def test_hqsam_aliases_and_real_folders(tmp_path: Path):
    write_pair(tmp_path, "dis", "x", gt_values())
    write_pair(tmp_path, "thin", "y", gt_values())
    assert (tmp_path / "DIS5K/DIS-VD/im/x.jpg").is_file()
    assert (tmp_path / "thin_object_detection/ThinObject5K/masks_test/y.png").is_file()
    assert (tmp_path / "thin_object_detection/HRSOD/masks_max255") == tmp_path / LAYOUTS["hrsod"].masks
    assert len(load_dataset("DIS5K", tmp_path)) == 1 and len(load_dataset("thinobject5k", tmp_path)) == 1


def test_hqsam_missing_folders_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="data_root not found"):
        load_dataset("dis", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="DIS5K images folder not found") as info:
        load_dataset("dis", tmp_path)
    assert str(tmp_path / "DIS5K/DIS-VD/im") in str(info.value) and "HQ-SAM layout" in str(info.value)
    (tmp_path / "thin_object_detection/COIFT/images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="COIFT masks folder not found") as info:
        load_dataset("coift", tmp_path)
    assert str(tmp_path / "thin_object_detection/COIFT/masks") in str(info.value)
    with pytest.raises(ValueError, match="needs data_root"):
        load_dataset("hrsod")


def test_hqsam_image_without_mask_and_empty_folder(tmp_path: Path):
    layout = LAYOUTS["hrsod"]
    (tmp_path / layout.images).mkdir(parents=True)
    (tmp_path / layout.masks).mkdir(parents=True)
    (tmp_path / layout.images / "note.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"no \.jpg images in .*images \(found \.txt\)"):
        load_dataset("hrsod", tmp_path)
    write_pair(tmp_path, "hrsod", "paired", gt_values())
    Image.new("RGB", (16, 12)).save(tmp_path / layout.images / "lonely.jpg")
    with pytest.raises(FileNotFoundError, match="1 image.s. without a mask: lonely.jpg") as info:
        load_dataset("hrsod", tmp_path)
    assert str(tmp_path / layout.masks / "lonely.png") in str(info.value)


def test_hqsam_bad_content_is_named(tmp_path: Path):
    write_pair(tmp_path, "coift", "small", np.full((6, 8), 255, np.uint8))
    Image.new("RGB", (16, 12)).save(tmp_path / LAYOUTS["coift"].images / "small.jpg")  # mask 6x8, image 12x16
    write_pair(tmp_path, "coift", "void", np.full((12, 16), 128, np.uint8))
    ds = load_dataset("coift", tmp_path)
    with pytest.raises(ValueError, match="small.jpg is"):
        ds[0]
    with pytest.raises(ValueError, match="void.png has no foreground"):
        ds[1]


def test_catalog_and_indexing():
    assert {"dis", "thin", "coift", "hrsod", "synthetic", "smoke"} <= set(list_datasets())
    with pytest.raises(ValueError, match="unknown dataset 'coco'; known: coift, dis"):
        load_dataset("coco")
    ds = load_dataset("synthetic", count=3, size=32)
    assert len(ds[0:3]) == 3 and ds[-1].name == ds[2].name
    with pytest.raises(IndexError, match="out of range"):
        ds[3]
    with pytest.raises(TypeError, match="int or a slice"):
        ds["0"]


def test_image_item_validates():
    image = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="at least one object"):
        ImageItem("x", image, [])
    with pytest.raises(ValueError, match=r"mask 0 must be a bool array of shape \(4, 5\)"):
        ImageItem("x", image, [np.zeros((4, 5), np.uint8)])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        ImageItem("x", image.astype(np.float32), [np.zeros((4, 5), bool)])


def test_synthetic_is_deterministic_and_consistent():
    ds = SyntheticDataset(count=12, size=(48, 64), seed=3)
    later = ds[7]
    again = SyntheticDataset(count=12, size=(48, 64), seed=3)
    assert np.array_equal(again[7].image, later.image)  # same item whatever was generated before
    assert all(np.array_equal(a, b) for a, b in zip(again[7].masks, later.masks, strict=True))
    assert not np.array_equal(SyntheticDataset(count=12, size=(48, 64), seed=4)[7].image, later.image)
    for item in ds:
        assert item.image.shape == (48, 64, 3) and 1 <= len(item.masks) <= 3
        assert all(m.any() for m in item.masks)
        union = np.sum(item.masks, axis=0)
        assert union.max() == 1  # visible regions are disjoint: occluded parts leave earlier masks
        top = item.masks[-1]  # the top object is painted with a colour far from the background's
        outside = item.image[union == 0].astype(float).mean(0)
        assert np.abs(item.image[top].astype(float).mean(0) - outside).max() > 30


@pytest.mark.parametrize("seed", range(5))
def test_synthetic_shapes_are_thin_or_holed(seed: int):
    rng = np.random.default_rng(seed)
    shapes = {kind: draw(rng, 96, 128).astype(np.uint8) for kind, draw in SHAPES.items()}
    assert all(mask.any() for mask in shapes.values())
    # a bar 1-4 px wide vanishes under an erosion of radius 2 (5x5 square)
    assert not cv2.erode(np.pad(shapes["bar"], 3), np.ones((5, 5), np.uint8)).any()
    for kind in ("ring", "ellipse"):  # filling the background from outside leaves the hole unfilled
        outside = np.pad(1 - shapes[kind], 1, constant_values=1)
        cv2.floodFill(outside, None, (0, 0), 2)
        assert (outside == 1).any(), kind


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="size >= 32"):
        SyntheticDataset(count=1, size=16)


def test_smoke_quokka_has_a_plausible_mask():
    ds = smoke_dataset()
    quokka = ds[0]
    assert quokka.name == "quokka" and quokka.image.shape == (643, 960, 3)
    assert 0.05 < quokka.masks[0].mean() < 0.8
    assert load_dataset("smoke", data_root="ignored")[0].name == "quokka"


def test_smoke_needs_imgaug_files(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(smoke_module, "locate", lambda dist, rel: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps imgaug"):
        smoke_dataset()


def test_smoke_adds_nuclei_when_stardist_files_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    labels = np.zeros((40, 50), np.uint16)
    labels[2:12, 2:12], labels[20:25, 30:40], labels[30:32, 0:3] = 1, 7, 9  # areas 100, 50, 6 (too small)
    values = (np.arange(40 * 50).reshape(40, 50) * 7).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "img2d.tif")
    Image.fromarray(labels).save(tmp_path / "mask2d.tif")
    real = smoke_module.locate
    fake = {smoke_module.NUCLEI_IMAGE: tmp_path / "img2d.tif", smoke_module.NUCLEI_LABELS: tmp_path / "mask2d.tif"}
    monkeypatch.setattr(smoke_module, "locate", lambda dist, rel: fake[rel] if dist == "stardist" else real(dist, rel))
    ds = smoke_dataset()
    nuclei = ds[1]
    assert len(ds) == 2 and nuclei.name == "nuclei" and nuclei.image.shape == (40, 50, 3)
    assert [int(m.sum()) for m in nuclei.masks] == [100, 50]  # largest first; the 6-px label is dropped
    assert nuclei.image.min() == 0 and nuclei.image.max() == 255


def test_box_from_mask_is_tight_and_inclusive():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:8] = True  # rows 2..4, columns 3..7
    mask[6, 9] = True  # a stray pixel widens the box to column 9, row 6
    np.testing.assert_array_equal(box_from_mask(mask), [3, 2, 9, 6])
    np.testing.assert_array_equal(box_from_mask(np.eye(1, dtype=bool)), [0, 0, 0, 0])  # one pixel: x1 == x0
    with pytest.raises(ValueError, match="empty"):
        box_from_mask(np.zeros((3, 3), bool))


def test_resize_stretches_or_keeps_aspect():
    mask = np.zeros((30, 40), bool)
    mask[:15, :20] = True  # the top-left quarter
    item = ImageItem("r", np.full((30, 40, 3), 200, np.uint8), [mask])
    square = resize_item(item, size=64)
    assert square.image.shape == (64, 64, 3) and square.masks[0].dtype == np.bool_
    np.testing.assert_array_equal(box_from_mask(square.masks[0]), [0, 0, 31, 31])  # still the quarter
    assert (square.image == 200).all()
    # SAM's ResizeLongestSide: 30x40 -> 48x64 (scale 1.6); 33x40 -> 52.8 rounds to 53
    kept = resize_item(item, size=64, keep_aspect=True)
    assert kept.image.shape == (48, 64, 3) and kept.masks[0].shape == (48, 64)
    np.testing.assert_array_equal(box_from_mask(kept.masks[0]), [0, 0, 31, 23])
    assert longest_side_shape(33, 40, 64) == (53, 64) and longest_side_shape(40, 33, 64) == (64, 53)

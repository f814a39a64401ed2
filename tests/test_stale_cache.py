"""Nothing stale is reused: caches and rows are keyed by the items read and by the merging code that ran.

The scenario of issue 12: run ``none`` on a folder, delete one image, run ``tome`` into the same
output_dir. Its fidelity must be that of a fresh output_dir, and the table must not put the old ``none`` row
(over the old items) beside it as if it were comparable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import builtin_registry
from fake_plugins import plugin_registering
from harness_helpers import composed
from PIL import Image
from video_folders import write_sav

from tomeplug.registry import Origin, use_registry
from tomeplug_eval import code_identity, runner, tables
from tomeplug_eval.data import LAYOUTS, load_dataset, smoke_dataset
from tomeplug_eval.data.synthetic import SyntheticDataset
from tomeplug_eval.results import ResultsFile
from tomeplug_eval.video import load_video_dataset, synthetic_video
from tomeplug_strategies.tome import ToMeConfig

COIFT = LAYOUTS["coift"]
BASE = ["model=sam_tiny", "dataset=coift", "threads=1", "progress=false", "warmup=0", "flops=false"]


def write_item(root: Path, stem: str, seed: int) -> None:
    """One 64x64 image and its mask in HQ-SAM's COIFT folders: a bright square on noise, placed by ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (64, 64, 3), dtype=np.uint8)
    gt = np.zeros((64, 64), np.uint8)
    y, x = rng.integers(4, 36, 2)
    side = int(rng.integers(12, 24))
    gt[y : y + side, x : x + side] = 255
    pixels[gt > 0] = rng.integers(180, 256, 3, dtype=np.uint8)
    for folder in (COIFT.images, COIFT.masks):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(root / COIFT.images / f"{stem}.jpg", quality=95)
    Image.fromarray(gt).save(root / COIFT.masks / f"{stem}.png")


def folder(root: Path, stems: str = "abc") -> Path:
    for seed, stem in enumerate(stems):
        write_item(root, stem, seed)
    return root


def run(output_dir: Path, data_root: Path, *overrides: str) -> dict | None:
    with composed(*BASE, f"data_root={data_root}", f"output_dir={output_dir}", *overrides) as cfg:
        return runner.run(cfg)


def test_deleting_an_image_never_reuses_the_old_reference_nor_mixes_rows(tmp_path, capsys):
    data, shared = folder(tmp_path / "data"), tmp_path / "shared"
    old_none = run(shared, data, "strategy=none")
    assert old_none["images"] == 3
    (data / COIFT.images / "a.jpg").unlink()  # items shift: b is now index 0, c index 1
    tome = run(shared, data, "strategy=tome")
    fresh = run(tmp_path / "fresh", data, "strategy=tome")
    assert tome["images"] == fresh["images"] == 2
    assert tome["metrics"] == fresh["metrics"]  # fidelity against b and c's own references, not a and b's
    assert tome["items"] == fresh["items"] != old_none["items"]
    assert len(list((shared / "cache" / "reference").rglob("*.npz"))) == 3  # b's and c's found by identity

    records = ResultsFile(shared).records()
    by_strategy = {row["strategy"]: row for row in tables.rows(records)}
    assert by_strategy["tome"]["speedup"] is None  # the only none row is over other items
    assert by_strategy["tome"]["items"] == tome["items"] and by_strategy["none"]["items"] == old_none["items"]
    markdown = (shared / "results.md").read_text()
    assert "coift: rows over 2 different item sets" in markdown
    assert tome["items"][:8] in markdown and old_none["items"][:8] in markdown
    assert "items" in (shared / "results.csv").read_text().splitlines()[0].split(",")
    assert "note: coift: rows over 2 different item sets" in capsys.readouterr().out  # said on the console too

    new_none = run(shared, data, "strategy=none")  # other items: a new run, not "finished earlier"
    assert new_none is not None and new_none["items"] == tome["items"]
    rows = tables.rows(ResultsFile(shared).records())
    tome_row = next(r for r in rows if r["strategy"] == "tome")
    expected = new_none["latency"]["encoder_s"] / tome["latency"]["encoder_s"]
    assert tome_row["speedup"] == pytest.approx(expected)  # against the none row over the same items


def test_a_file_replaced_under_the_same_name_is_a_new_item(tmp_path):
    data, shared = folder(tmp_path / "data"), tmp_path / "shared"
    first = run(shared, data, "strategy=tome")
    image = data / COIFT.images / "b.jpg"
    write_item(data, "b", seed=7)  # same name and index, other pixels and mask
    later = image.stat().st_mtime_ns + 10**9
    os.utime(image, ns=(later, later))
    os.utime(data / COIFT.masks / "b.png", ns=(later, later))
    again = run(shared, data, "strategy=tome")
    assert again is not None and again["items"] != first["items"]
    fresh = run(tmp_path / "fresh", data, "strategy=tome")
    assert again["metrics"] == fresh["metrics"]


def test_edited_merging_code_reruns_a_finished_run(tmp_path, monkeypatch):
    data, out = folder(tmp_path / "data", "ab"), tmp_path / "out"
    first = run(out, data, "strategy=tome")
    assert run(out, data, "strategy=tome") is None  # finished earlier: skipped
    assert run(out, data, "strategy=none") is not None
    monkeypatch.setattr(code_identity, "merging_code_digest", lambda: "edited")
    again = run(out, data, "strategy=tome")
    assert again is not None and again["run_key"] != first["run_key"]
    assert again["merging_code"]["source"] == "edited"
    assert run(out, data, "strategy=none") is None  # the unmerged model runs no merging code


def twin_registry(version: str | None):
    """The built-ins plus (unless ``version`` is None) a plugin distribution registering ``tome_twin``."""

    @__import__("attrs").frozen(kw_only=True)
    class TomeTwin(ToMeConfig):
        name = "tome_twin"

    registry = builtin_registry()
    if version is not None:
        origin = Origin("twin", "tomeplug-twin", version)
        registry.register_plugin(plugin_registering(TomeTwin, name="twin"), "twin", origin)
    return registry


def test_plugin_version_or_absence_changes_the_resume_key(tmp_path):
    data, out = folder(tmp_path / "data", "ab"), tmp_path / "out"
    twin = ["strategy=plugin", "strategy.name=tome_twin"]
    with use_registry(twin_registry("1.0")):
        first = run(out, data, *twin)
        assert run(out, data, *twin) is None
    twin_origin = first["merging_code"]["plugins"]["tome_twin"]
    assert (twin_origin["distribution"], twin_origin["version"]) == ("tomeplug-twin", "1.0") and twin_origin["source"]
    with use_registry(twin_registry("1.1")):
        upgraded = run(out, data, *twin)
    assert upgraded is not None and upgraded["run_key"] != first["run_key"]
    with use_registry(twin_registry(None)), pytest.raises(KeyError, match="unknown strategy 'tome_twin'"):
        run(out, data, *twin)  # uninstalled: an error before anything, never "finished earlier"


def test_every_dataset_kind_names_what_its_items_read(tmp_path):
    data = folder(tmp_path / "data")
    coift = load_dataset("coift", data)
    keys = [coift.identity(i) for i in range(3)]
    assert len({repr(k) for k in keys}) == 3 and "b.jpg" in repr(keys[1]) and "b.png" in repr(keys[1])
    synthetic = SyntheticDataset(count=2, size=32, seed=3)
    assert synthetic.identity(0) != synthetic.identity(1) != SyntheticDataset(count=2, size=32, seed=4).identity(1)
    assert synthetic.identity(1) == SyntheticDataset(count=5, size=32, seed=3).identity(1)  # count is not the item
    video = synthetic_video(count=2, frames=3, size=32, cache_dir=tmp_path / "video")
    before = video.identity(1)
    assert before != video.identity(0) and "00002.jpg" in repr(before) and "00002.png" in repr(before)
    frame = video.images / video.names[1] / "00001.jpg"
    os.utime(frame, ns=(1, 1))
    assert video.identity(1) != before
    write_sav(tmp_path / "sav", frames=5)
    sav = load_video_dataset("sav", tmp_path / "sav")
    stamps = repr(sav.identity(0))
    assert "JPEGImages_24fps/sav_000001/00004.jpg" in stamps and "Annotations_6fps/sav_000001/001/00004.png" in stamps
    try:
        smoke = smoke_dataset()
    except FileNotFoundError:
        return
    assert "quokka.jpg" in repr(smoke.identity(0))

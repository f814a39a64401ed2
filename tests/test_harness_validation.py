"""Bad harness configuration fails before any item is computed; errors name the file; results honour the umask."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from harness_helpers import composed, free_port, run
from PIL import Image
from torch import nn

from tomeplug_eval import distributed, image_task
from tomeplug_eval.data import load_dataset
from tomeplug_eval.image_files import ImageFileError
from tomeplug_eval.model_catalog import CheckpointError
from tomeplug_eval.results import atomic_write
from tomeplug_eval.run_spec import resolve
from tomeplug_eval.tasks import Task, TaskSetup
from tomeplug_eval.video import VideoItem
from tomeplug_eval.video.vos import run_vos


@pytest.fixture
def no_reference_pass(monkeypatch):
    """Record every call of the image task's reference pass (none is expected)."""
    calls: list[list[int]] = []
    monkeypatch.setattr(image_task.ImageTask, "prepare", lambda self, indices: calls.append(indices))
    return calls


def written(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_r_above_the_cap_fails_before_any_reference_item(tmp_path, no_reference_pass):
    with pytest.raises(ValueError, match=r"r=0\.7 is out of range for strategy 'tome'.*\[0, 0\.5\]"):
        run(tmp_path, "strategy=tome", "r=0.7")
    assert no_reference_pass == [] and written(tmp_path) == []


BAD_CONFIGS = {
    "layers beyond the depth": (["strategy=tome", "layers=[0,9]"], IndexError, r"block 9 .*4 blocks"),
    "mix beyond the depth": (["strategy=mix", "layers={0:tome,7:pitome}"], IndexError, r"block 7 .*4 blocks"),
    "preset of another model": (["strategy=pitome", "layers=paper"], ValueError, r"preset 'paper' was made for"),
    "unknown preset": (["strategy=tome", "layers=fastest"], KeyError, r"unknown schedule preset 'fastest'"),
    "unknown plugin": (["strategy=plugin", "strategy.name=no_such_strategy"], KeyError, "no_such_strategy"),
    "unknown parameter": (["strategy=pitome", "+strategy.bogus=1"], TypeError, r"no parameter 'bogus'"),
    "bad scope": (["strategy=tome", "strategy.scope=everywhere"], ValueError, r"'everywhere' is not a merge scope"),
    "batch_size 0": (["strategy=tome", "batch_size=0"], ValueError, r"batch_size=0 .*integer >= 1"),
    "limit 0": (["strategy=none", "limit=0"], ValueError, r"limit=0 .*integer >= 1"),
    "unknown dtype": (["strategy=tome", "dtype=float8"], ValueError, r"dtype='float8'.*float32, fp32.*bf16"),
    "timeout 0": (["strategy=tome", "dist_timeout_s=0"], ValueError, r"dist_timeout_s=0 .*> 0"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_configuration_fails_before_any_reference_item(tmp_path, no_reference_pass, case):
    overrides, error, message = BAD_CONFIGS[case]
    with pytest.raises(error, match=message):
        run(tmp_path, *overrides)
    assert no_reference_pass == [] and written(tmp_path) == []


def test_the_schedule_check_leaves_the_model_unmerged(tmp_path):
    """The reference outputs of a tome run (computed after the check's patch and unpatch) equal the baseline's."""
    run(tmp_path / "tome", "strategy=tome", "limit=1", "flops=false")
    run(tmp_path / "none", "strategy=none", "limit=1", "flops=false")
    (after_check,) = (tmp_path / "tome").glob("cache/reference/*/*.npz")
    (baseline,) = (tmp_path / "none").glob("cache/reference/*/*.npz")
    with np.load(after_check) as a, np.load(baseline) as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_bf16_is_bfloat16_and_results_honour_the_umask(tmp_path, umask_022):
    record = run(tmp_path, "strategy=tome", "dtype=bf16", "limit=1", "flops=false")
    assert record is not None and record["images"] == 1
    assert run(tmp_path, "strategy=tome", "dtype=bfloat16", "limit=1", "flops=false") is None  # the same run
    with composed("model=sam_tiny", "dtype=bf16") as cfg:
        spec = resolve(cfg, "cpu")
        task = Task(TaskSetup(cfg, spec, torch.device("cpu"), distributed.World(), tmp_path))
        assert spec.dtype == "bfloat16" and task.autocast().fast_dtype == torch.bfloat16
    files = written(tmp_path)
    assert {"results.jsonl", "results.csv", "results.md", "results.png"} <= {p.name for p in files}
    assert any(p.suffix == ".npz" for p in files)  # the reference outputs
    assert {oct(p.stat().st_mode & 0o777) for p in files if p.name != ".lock"} == {oct(0o644)}


def test_atomic_write_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def truncated_jpeg(path: Path, size: int = 48) -> None:
    """A JPEG of random pixels cut to half its length: the header reads, the body does not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_image_in_hq_sam_layout_names_the_file(tmp_path):
    root = tmp_path / "data"
    images, masks = root / "thin_object_detection/COIFT/images", root / "thin_object_detection/COIFT/masks"
    truncated_jpeg(images / "bird.jpg")
    masks.mkdir(parents=True)
    Image.fromarray(np.full((48, 48), 255, np.uint8)).save(masks / "bird.png")
    with pytest.raises(ImageFileError, match=r"cannot read image .*COIFT/images/bird\.jpg.*truncated"):
        load_dataset("coift", root)[0]
    with pytest.raises(ImageFileError, match=r"bird\.jpg"):
        run(tmp_path / "out", "strategy=none", "dataset=coift", f"data_root={root}")


class FrameReadingPredictor(nn.Module):
    """Just enough of ``SAM2VideoPredictor`` for ``init_state``: it reads the frames with SAM 2's own loader."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder, self.non_overlap_masks = nn.Identity(), False

    def init_state(self, video_path: str, offload_video_to_cpu: bool = False) -> dict:
        from sam2.utils.misc import load_video_frames

        load_video_frames(video_path, 32, offload_video_to_cpu, compute_device=torch.device("cpu"))
        raise AssertionError("init_state read a truncated frame without an error")


def test_truncated_video_frame_names_the_frame(tmp_path):
    frames = [tmp_path / "video" / f"{i:05d}.jpg" for i in range(3)]
    frames[0].parent.mkdir()
    for frame in frames:
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(frame)
    truncated_jpeg(frames[1])
    mask = np.zeros((48, 48), bool)
    mask[10:20, 10:20] = True
    item = VideoItem("video", frames, {0: {1: mask}}, {1: 0}, (48, 48))
    with pytest.raises(ImageFileError, match=r"cannot read image .*video/00001\.jpg"):
        run_vos(FrameReadingPredictor(), item, progress=True)


def test_empty_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path):
    (tmp_path / "empty.pth").touch()
    with pytest.raises(CheckpointError, match=r"empty\.pth \(0 bytes: an empty file\)"):
        run(tmp_path / "out", f"checkpoint={tmp_path / 'empty.pth'}")


class Joined(Exception):
    """Stands in for joining the process group: carries the timeout it was given."""


def test_runner_joins_with_the_configured_timeout(tmp_path, monkeypatch):
    def join(backend: str, timeout: datetime.timedelta) -> None:
        raise Joined(backend, timeout)

    monkeypatch.setattr(distributed.dist, "init_process_group", join)
    monkeypatch.setattr(distributed, "_timeout_s", distributed.DEFAULT_TIMEOUT_S)
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(Joined) as joined:
        run(tmp_path, "strategy=tome", "dist_timeout_s=7", "device=cpu")
    assert joined.value.args == ("gloo", datetime.timedelta(seconds=7))
    with composed() as cfg:
        assert cfg.dist_timeout_s == distributed.DEFAULT_TIMEOUT_S <= 600  # minutes, not an hour


STALLING_RANK = """
import sys, time
from tomeplug_eval import distributed
world = distributed.init("cpu", timeout_s=float(sys.argv[1]))
if world.rank == 1:
    time.sleep(120)  # stalls
distributed.gather({"rank": world.rank}, world)
"""


def stall(timeout_s: float) -> tuple[int, float, str]:
    """Run STALLING_RANK on two ranks; rank 0's exit code, seconds waited and stderr."""
    port, ranks = free_port(), []
    try:
        for rank in (0, 1):
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            env |= {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
            command = [sys.executable, "-c", STALLING_RANK, f"{timeout_s:g}"]
            ranks.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
        started = time.perf_counter()
        _, stderr = ranks[0].communicate(timeout=120)
        return ranks[0].returncode, time.perf_counter() - started, stderr
    finally:
        for process in ranks:
            process.kill()
            process.wait()


def test_a_stalled_rank_ends_the_run_after_the_timeout(tmp_path):
    """Rank 1 stalls after joining: rank 0 gives up on the gather after dist_timeout_s, naming it. On a busy
    machine the ranks may not even join within a short timeout (also a clear error): retry with a longer one."""
    for timeout_s in (1, 4, 15):
        returncode, waited, stderr = stall(timeout_s)
        assert returncode != 0 and waited < timeout_s + 60
        if f"gave up waiting to join the process group (dist_timeout_s={timeout_s:g})" not in stderr:
            break
    assert f"rank 0 of 2 gave up waiting to gather every rank's results (dist_timeout_s={timeout_s:g})" in stderr

"""The harness on video: a tiny SAM 2 video predictor on synthetic_video, sweeps, resume, torchrun, errors."""

from __future__ import annotations

import math

import pytest
from harness_helpers import VFAST, free_port, harness, run_video

from tomeplug_eval.results import ItemCache, ResultsFile, read_jsonl

run = run_video


def test_sweep_of_baseline_and_tome_gives_video_rows(tmp_path):
    done = harness("-m", *VFAST, "strategy=none,tome", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "J&F=" in done.stdout and "ms/img" in done.stdout
    none, tome = ResultsFile(tmp_path).records()
    assert (none["strategy"], tome["strategy"]) == ("none", "tome")
    for record in (none, tome):
        assert record["task"] == "video" and record["dataset"] == "synthetic_video"
        assert (record["videos"], record["frames"]) == (2, 8) and record["objects"] >= 2
        assert all(math.isfinite(record["metrics"][k]) for k in ("J", "F", "J&F", "fidelity_J"))
        assert 0.0 <= record["metrics"]["J&F"] <= 1.0
        assert record["latency"]["per"] == "frame" and record["latency"]["encoder_s"] > 0
        predictions = tmp_path / "predictions" / record["items_key"]
        assert len(list(predictions.glob("*/*.png"))) == 8  # one palette PNG per frame, DAVIS layout
    assert none["metrics"]["fidelity_J"] == 1.0
    assert 0.0 <= tome["metrics"]["fidelity_J"] <= 1.0 and tome["flops"]["ratio"] < 1.0
    assert tome["flops"]["dense_gflops"] == none["flops"]["gflops"] > 0
    assert "| sam2_tiny | random | synthetic_video | tome | all |" in (tmp_path / "results.md").read_text()


def test_finished_run_is_skipped_and_items_resume(tmp_path):
    first = run(tmp_path, "strategy=tome", "flops=false")
    assert first is not None and first["videos"] == 2
    assert run(tmp_path, "strategy=tome", "flops=false") is None
    assert len(ResultsFile(tmp_path).records()) == 1
    grown = run(tmp_path, "strategy=tome", "flops=false", "dataset.count=3")  # other data: a new run
    assert grown["videos"] == 3 and grown["run_key"] != first["run_key"]


def test_two_processes_give_the_numbers_of_one(tmp_path):
    two = tmp_path / "two"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = harness(*VFAST, "strategy=tome", "flops=false", "dataset.count=3", f"output_dir={two}", module=torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = ResultsFile(two).records()
    single = run(tmp_path / "one", "strategy=tome", "flops=false", "dataset.count=3")
    assert record["world_size"] == 2 and single["world_size"] == 1 and record["run_key"] == single["run_key"]
    assert record["metrics"] == single["metrics"]  # exactly, not approximately
    assert (record["videos"], record["frames"], record["objects"]) == (3, 12, single["objects"])
    shards = [[r["index"] for r in read_jsonl(ItemCache(two, record["items_key"], rank).path)] for rank in (0, 1)]
    assert shards == [[0, 2], [1]]


def test_video_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="video datasets need a SAM 2 model; got sam_vit_b"):
        run(tmp_path, "model=sam_vit_b")
    with pytest.raises(FileNotFoundError, match=r"data_root not found: .*nowhere"):
        run(tmp_path, "dataset=davis", f"data_root={tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="needs data_root"):
        run(tmp_path, "dataset=davis")

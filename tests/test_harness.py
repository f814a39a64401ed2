"""The evaluation harness on tiny models and generated data: configs, sweeps, resume, errors, tables."""

from __future__ import annotations

import json

import attrs
import pytest
import torch
from harness_helpers import FAST, composed, harness, run
from tiny_models import tiny_sam_encoder

import tomeplug
from tomeplug.setting import OPTION_NAMES
from tomeplug_eval import image_task, tables
from tomeplug_eval.model_catalog import CheckpointError
from tomeplug_eval.results import ItemCache, ResultsFile
from tomeplug_eval.speed_check import interleaved_speed


def test_config_pins_groups_and_keys(registry):
    with composed() as cfg:
        for key in ("layers", "r", "checkpoint", "data_root", "device", "batch_size", "output_dir"):
            assert key in cfg
        assert (cfg.model.name, cfg.strategy.name, cfg.dataset.name) == ("sam_vit_b", "none", "synthetic")
    for name, entry in registry.strategies.items():  # every built-in strategy has a config with its own params
        with composed(f"strategy={name}") as cfg:
            params = set(cfg.strategy) - {"name"}
            assert cfg.strategy.name == name and params <= set(attrs.fields_dict(entry.obj)) | set(OPTION_NAMES), name


def test_multirun_of_two_strategies_gives_two_rows(tmp_path):
    done = harness("-m", *FAST, "limit=2", "strategy=none,tome", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RANDOM WEIGHTS" in done.stdout
    records = ResultsFile(tmp_path).records()
    assert [r["strategy"] for r in records] == ["none", "tome"]
    none, tome = records
    assert none["weights"] == "random" and none["config"]["model"] == {"name": "sam_tiny"}
    assert none["metrics"]["fid_iou"] == 1.0 and none["metrics"]["emb_cos"] == pytest.approx(1.0)
    assert tome["flops"]["ratio"] < 1.0 and 0.5 < tome["metrics"]["fid_iou"] <= 1.0
    assert tome["blocks"]["adapter"] == "sam_vit" and len(tome["blocks"]["layers"]) == 4
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 3
    markdown = (tmp_path / "results.md").read_text().partition("\n\n")[0].splitlines()  # the table, not its legend
    assert len(markdown) == 4 and "| sam_tiny | random | synthetic | tome | all |" in markdown[3]
    assert (tmp_path / "results.png").stat().st_size > 0


def test_finished_run_is_skipped(tmp_path):
    first = run(tmp_path, "strategy=tome")
    assert first is not None and first["images"] == 3
    assert run(tmp_path, "strategy=tome") is None
    assert len(ResultsFile(tmp_path).records()) == 1
    assert run(tmp_path, "strategy=tome", "resume=false")["metrics"] == first["metrics"]
    assert len(ResultsFile(tmp_path).records()) == 1  # a rerun replaces its line


def test_interrupted_run_completes_only_missing_items(tmp_path, monkeypatch):
    full = run(tmp_path / "full", "strategy=tome", "flops=false")
    cached = {r["index"]: r for r in ItemCache(tmp_path / "full", full["items_key"]).load().values()}
    partial = ItemCache(tmp_path / "part", full["items_key"])
    partial.append(cached[0])
    partial.append(cached[2])
    with open(partial.path, "a") as f:
        f.write('{"index": 1, "iou": [0.')  # torn by the interruption: ignored, recomputed
    seen: list[list[int]] = []
    evaluate = image_task.ImageTask.evaluate
    monkeypatch.setattr(image_task.ImageTask, "evaluate", lambda self, idx: seen.append(idx) or evaluate(self, idx))
    resumed = run(tmp_path / "part", "strategy=tome", "flops=false")
    assert seen == [[1]] and resumed["run_key"] == full["run_key"]
    assert resumed["metrics"] == full["metrics"] and resumed["images"] == 3
    assert sorted(r["index"] for r in ItemCache(tmp_path / "part", full["items_key"]).load().values()) == [0, 1, 2]
    grown = run(tmp_path / "part", "strategy=tome", "flops=false", "limit=4")  # a larger limit: a new run
    assert seen == [[1], [3]] and grown["images"] == 4 and grown["run_key"] != full["run_key"]


def test_mix_and_match_schedule_and_other_model_families(tmp_path):
    mixed = run(tmp_path, "strategy=mix", "layers={0:tome,1:{strategy:pitome,margin:0.3}}", "r=0.25", "limit=1")
    blocks = mixed["blocks"]["layers"]
    assert blocks["0"]["strategy"] == "tome" and blocks["1"]["margin"] == 0.3 and blocks["1"]["r"] == 0.25
    assert tables.schedule_label(mixed).startswith("{0: tome, 1: ")
    for model in ("hq_sam_tiny", "sam2_tiny"):
        record = run(tmp_path, f"model={model}", "strategy=pitome", "layers=[0,2]", "limit=1")
        assert record["flops"]["ratio"] < 1.0 and 0.0 <= record["metrics"]["miou"] <= 1.0
    aspect = run(tmp_path, "strategy=none", "keep_aspect=true", "dataset=smoke")
    assert aspect["metrics"]["fid_iou"] == 1.0 and aspect["config"]["keep_aspect"] is True


@pytest.mark.parametrize("model", ["sam_tiny", "sam2_tiny"])
def test_every_merge_scope_reports_fidelity_and_flops(tmp_path, model):
    scopes = ("attn", "block", "span")
    records = {s: run(tmp_path, f"model={model}", "strategy=tome", f"strategy.scope={s}", "limit=1") for s in scopes}
    for scope, record in records.items():
        assert {block["scope"] for block in record["blocks"]["layers"].values()} == {scope}
        assert 0.0 < record["metrics"]["emb_cos"] < 1.0 and 0.0 <= record["metrics"]["fid_iou"] <= 1.0, scope
    assert records["block"]["flops"]["ratio"] < records["attn"]["flops"]["ratio"] < 1.0
    assert records["span"]["flops"]["ratio"] <= records["block"]["flops"]["ratio"] + 1e-3


def test_speed_rounds_time_the_run_against_its_unpatched_copy(tmp_path):
    record = run(tmp_path, "strategy=tome", "speed_rounds=2", "limit=1", "flops=false")
    speed = record["latency"]["interleaved"]
    assert speed["rounds"] == 2 and speed["dense_s"] > 0 and speed["patched_s"] > 0
    assert speed["speedup"] == pytest.approx(speed["dense_s"] / speed["patched_s"])
    assert tables.rows([record])[0]["speedup"] == pytest.approx(speed["speedup"])  # no baseline run needed
    baseline = run(tmp_path, "strategy=none", "speed_rounds=2", "limit=1", "flops=false")
    assert "interleaved" not in baseline["latency"]  # the unmerged model has nothing to be compared with


def test_interleaved_speed_leaves_the_patch_and_needs_one():
    encoder, image = tiny_sam_encoder(), torch.randn(1, 3, 256, 256)
    with pytest.raises(ValueError, match="not patched"):
        interleaved_speed(encoder, (image,), rounds=1)
    handle = tomeplug.patch(encoder, "tome", r=0.5)
    speed = interleaved_speed(encoder, (image,), rounds=1, warmup=0)
    assert speed["rounds"] == 1 and speed["speedup"] > 0 and tomeplug.active_patch(encoder) is handle


def test_bad_paths_and_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_root not found: .*nowhere.*HQ-SAM layout"):
        run(tmp_path, "dataset=coift", f"data_root={tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="needs data_root"):
        run(tmp_path, "dataset=dis")
    with pytest.raises(FileNotFoundError, match=r"absent\.pth .*not found"):
        run(tmp_path, f"checkpoint={tmp_path / 'absent.pth'}")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt\.pth.*corrupt"):
        run(tmp_path, f"checkpoint={tmp_path / 'corrupt.pth'}")
    with pytest.raises(ValueError, match="strategy=mix"):
        run(tmp_path, "strategy=tome", "layers={0:tome}")
    with pytest.raises(KeyError, match="no_such_strategy"):
        run(tmp_path, "strategy=plugin", "strategy.name=no_such_strategy")


def test_help_lists_the_groups():
    done = harness("--help")
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("model: ", "strategy: ", "dataset: "):
        assert line in done.stdout
    assert "sam2.1_hiera_b+" in done.stdout and "pitome_v2" in done.stdout and "coift" in done.stdout


def test_tables_compare_against_the_baseline():
    def record(strategy: str, seconds: float, gflops: float) -> dict:
        return {
            "run_key": strategy, "model": "m", "weights": "random", "dataset": "d", "device": "cpu", "items": "i",
            "strategy": strategy, "layers": [0, 2] if strategy != "none" else None, "params": {},
            "metrics": {"emb_cos": 0.99, "miou": 0.5}, "latency": {"encoder_s": seconds}, "images": 2,
            "flops": {"gflops": gflops, "ratio": gflops / 10, "overhead_g": 0.0}, "peak_mem_mb": None,
        }  # fmt: skip

    records = [record("none", 2.0, 10.0), record("tome", 1.0, 6.0)]
    rows = tables.rows(records)
    assert rows[1]["speedup"] == 2.0 and rows[1]["schedule"] == "[0, 2]" and rows[0]["schedule"] == "-"
    lines = tables.to_markdown(records).splitlines()
    assert lines[0].index("mIoU") < lines[0].index("emb. cos")  # known metrics in a fixed order
    assert "| 50.00 | 0.9900 | 6 | 0.600 |" in lines[3] and "| 2.00x | - | - | 2 |" in lines[3]
    assert json.loads(json.dumps(rows))  # JSON-able

"""The demo on the tiny SAM, its helpers, and the model builders' checkpoint errors."""

from __future__ import annotations

import re

import pytest
import torch

from tomeplug_eval import demo, sam_models
from tomeplug_eval.latency import compare, measure_latency


def test_demo_prints_both_variants_with_sane_numbers(capsys):
    result = demo.main(["--model", "tiny", "--threads", "1", "--warmup", "0", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "RANDOM" in out and "quokka.jpg" in out
    dense_line = next(line for line in out.splitlines() if line.startswith("dense "))
    merged_line = next(line for line in out.splitlines() if line.startswith("tome r=0.5 "))
    assert "49->25 in 2/2" in merged_line and "256->128 in 2/2" in merged_line
    assert re.search(r"\b49\s+256\b", dense_line)
    dense, merged = result["rows"]
    assert dense["flops_ratio"] == 1.0 and dense["cosine"] == pytest.approx(1.0)
    assert 0.3 < merged["flops_ratio"] < 1.0
    assert 0.5 < merged["cosine"] <= 1.0 + 1e-6
    assert merged["gflops"] < dense["gflops"] and min(dense["time_s"], merged["time_s"]) > 0
    assert result["layers"] == [0, 1, 2, 3]


def test_default_layers_scale_the_paper_schedule():
    assert demo.default_layers(24) == list(demo.PAPER_SCHEDULE_VIT_L)
    assert demo.default_layers(12) == [0, 2, 5, 8, 9, 10, 11]


def test_photo_falls_back_to_a_generated_image(monkeypatch):
    def missing(name):
        raise demo.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(demo.importlib.metadata, "distribution", missing)
    image, source = demo.load_photo()
    assert "GENERATED" in source and image.dtype.name == "uint8" and image.shape[2] == 3


def test_compare_interleaves_and_reports_speedup():
    calls = []
    result = compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert set(result["speedup"]) == {"a", "b"} and result["speedup"]["a"] == 1.0
    assert len(measure_latency(lambda: None, warmup=0, repeats=2)["all_s"]) == 2


def test_random_weights_warn_loudly():
    with pytest.warns(sam_models.RandomWeightsWarning, match="RANDOM"):
        sam_models.build_model("tiny")


def test_checkpoint_errors_name_file_problem_and_fix(tmp_path):
    model = sam_models.MODELS["tiny"].build()
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        sam_models.load_checkpoint(model, tmp_path / "absent.pth", "tiny")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(sam_models.CheckpointError, match="corrupt.pth.*corrupt"):
        sam_models.load_checkpoint(model, tmp_path / "corrupt.pth", "tiny")
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    state["image_encoder.pos_embed"] = torch.zeros(1, 2, 2, 64)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(sam_models.CheckpointError, match=r"other.pth.*unexpected keys \['extra.weight'\].*pos_embed"):
        sam_models.load_checkpoint(model, tmp_path / "other.pth", "tiny")
    torch.save(model.state_dict(), tmp_path / "good.pth")
    assert sam_models.build_model("tiny", tmp_path / "good.pth").training is False


def test_official_checkpoint_paths_and_download_hint():
    assert str(sam_models.default_checkpoint("vit_b")).endswith("checkpoints/sam_vit_b_01ec64.pth")
    with pytest.raises(FileNotFoundError, match="download .*sam_vit_l_0b3195.pth"):
        sam_models.load_checkpoint(torch.nn.Linear(1, 1), "nowhere/sam_vit_l_0b3195.pth", "vit_l")

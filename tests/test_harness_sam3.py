"""The harness on SAM 3 (``model=sam3_tiny``: sam3's own builder, tiny ViT): rows, fidelity, FLOPs, checkpoints."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sam3")

from harness_helpers import run  # noqa: E402

from tomeplug_eval.model_catalog import CheckpointError, build_model, load_checkpoint  # noqa: E402

SAM3 = ["model=sam3_tiny", "limit=1"]


def test_none_and_tome_rows_in_every_scope(tmp_path):
    """Box prompts through SAM 3's SAM 1 task predictor; merged runs lose a little fidelity and save FLOPs."""
    baseline = run(tmp_path, *SAM3, "strategy=none")
    assert baseline["metrics"]["fid_iou"] == 1.0 and baseline["metrics"]["emb_cos"] == pytest.approx(1.0)
    assert baseline["objects"] > 0 and 0.0 <= baseline["metrics"]["miou"] <= 1.0
    dense = baseline["flops"]["by_operator"]
    assert dense["scaled_dot_product_attention"] > 0 and dense["complex_mul"] > 0  # SDPA and RoPE counted
    records = {s: run(tmp_path, *SAM3, "strategy=tome", f"strategy.scope={s}") for s in ("attn", "block", "span")}
    for scope, record in records.items():
        assert {block["scope"] for block in record["blocks"]["layers"].values()} == {scope}
        assert len(record["blocks"]["layers"]) == 5  # every block of the tiny ViT
        assert 0.0 < record["metrics"]["emb_cos"] < 1.0 and 0.0 <= record["metrics"]["fid_iou"] <= 1.0, scope
        merged = record["flops"]["by_operator"]
        assert merged["scaled_dot_product_attention"] < dense["scaled_dot_product_attention"], scope
        assert merged["complex_mul"] == dense["complex_mul"] // 2, scope  # RoPE on half the tokens
        assert record["flops"]["dense_gflops"] == pytest.approx(baseline["flops"]["gflops"])
    assert records["block"]["flops"]["ratio"] < records["attn"]["flops"]["ratio"] < 1.0
    assert records["span"]["flops"]["ratio"] <= records["block"]["flops"]["ratio"] + 1e-6
    table = (tmp_path / "results.md").read_text()
    assert table.count("| sam3_tiny | random | synthetic |") == 4


def official_layout(model: torch.nn.Module) -> dict:
    """A state dict in sam3.pt's layout: the detector's keys under ``detector.``, the tracker's under ``tracker.``."""
    tracker = "inst_interactive_predictor.model."
    state = {}
    for key, value in model.state_dict().items():
        assert key.startswith(tracker) or not key.startswith("inst_interactive_predictor")
        state[f"tracker.{key.removeprefix(tracker)}" if key.startswith(tracker) else f"detector.{key}"] = value
    return {"model": state}


def test_checkpoint_in_the_official_layout_loads_as_sam3_own_loader_loads_it(tmp_path):
    from sam3.model_builder import _load_checkpoint

    torch.manual_seed(1)
    path = tmp_path / "sam3.pt"
    torch.save(official_layout(build_model("sam3_tiny")), path)
    ours = build_model("sam3_tiny", checkpoint=path)  # strict: every key found, none left over
    torch.manual_seed(2)
    theirs = build_model("sam3_tiny")
    _load_checkpoint(theirs, str(path))
    expected = theirs.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in ours.state_dict().items())


def test_empty_or_mismatched_sam3_checkpoint_is_a_clear_error(tmp_path):
    empty = tmp_path / "sam3.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"sam3\.pt \(0 bytes.*huggingface\.co/facebook/sam3"):
        load_checkpoint(build_model("sam3_tiny"), empty, "sam3")
    with pytest.raises(CheckpointError, match=r"sam3\.pt \(0 bytes"):
        run(tmp_path, *SAM3, f"checkpoint={empty}")
    state = official_layout(build_model("sam3_tiny", img_size=168))  # another ViT size: other RoPE/abs-pos shapes
    del state["model"]["tracker.no_mem_embed"]
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt does not fit model 'sam3'.*sam3\.pt.*missing.*no_mem_embed"):
        load_checkpoint(build_model("sam3_tiny"), tmp_path / "other.pt", "sam3")
    with pytest.raises(CheckpointError, match=r"other\.pt does not fit model 'sam3_tiny'.*shape of"):
        run(tmp_path, *SAM3, f"checkpoint={tmp_path / 'other.pt'}")

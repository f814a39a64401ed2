"""The harness on Ultralytics' SAM and SAM 2 (``model=ultralytics_*``): rows through its predictors, checkpoints."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ultralytics")

from harness_helpers import run  # noqa: E402

from tomeplug_eval.model_catalog import CheckpointError, build_model  # noqa: E402

TINY = ["ultralytics_sam_tiny", "ultralytics_sam2_tiny"]


@pytest.mark.parametrize("model", TINY)
def test_merged_rows_lose_a_little_fidelity_and_save_flops(tmp_path, model):
    """Box prompts through Ultralytics' predictor; every scope merges and saves FLOPs."""
    baseline = run(tmp_path, f"model={model}", "strategy=none", "limit=1")
    assert baseline["metrics"]["fid_iou"] == 1.0 and baseline["metrics"]["emb_cos"] == pytest.approx(1.0)
    assert baseline["objects"] > 0
    for scope in ("attn", "block", "span"):
        record = run(tmp_path, f"model={model}", "strategy=tome", f"strategy.scope={scope}", "limit=1")
        assert {block["scope"] for block in record["blocks"]["layers"].values()} == {scope}
        assert 0.0 < record["metrics"]["emb_cos"] < 1.0 and 0.0 <= record["metrics"]["fid_iou"] <= 1.0, scope
        assert record["flops"]["ratio"] < 1.0 and record["flops"]["dense_gflops"] == baseline["flops"]["gflops"]


def test_checkpoint_in_ultralytics_layout_loads_as_its_own_loader_loads_it(tmp_path):
    """Ultralytics' files hold the state dict (optionally under ``model``); loading is strict."""
    from ultralytics.models.sam.build import _load_checkpoint

    torch.manual_seed(1)
    path = tmp_path / "sam2_t.pt"
    torch.save({"model": build_model("ultralytics_sam2_tiny").state_dict()}, path)
    ours = build_model("ultralytics_sam2_tiny", checkpoint=path)
    torch.manual_seed(2)
    theirs = _load_checkpoint(build_model("ultralytics_sam2_tiny"), str(path))
    expected = theirs.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in ours.state_dict().items())
    torch.save({"model": build_model("ultralytics_sam_tiny").state_dict()}, path)
    with pytest.raises(CheckpointError, match="does not fit model 'ultralytics_sam2_tiny'"):
        build_model("ultralytics_sam2_tiny", checkpoint=path)

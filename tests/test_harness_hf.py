"""The harness on Hugging Face transformers models (``model=hf_*``): rows, fidelity, FLOPs, from_pretrained folders."""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("transformers")

from harness_helpers import run  # noqa: E402

from tomeplug_eval.hf_architectures import HIERA_DEFAULTS, PretrainedFolderError, hf_sam2  # noqa: E402
from tomeplug_eval.model_catalog import MODELS, build_model, resolve_checkpoint  # noqa: E402

TINY = ["hf_sam_tiny", "hf_sam_hq_tiny", "hf_sam2_tiny", "hf_sam3_tiny"]


@pytest.mark.parametrize("model", TINY)
def test_merged_rows_lose_a_little_fidelity_and_save_flops(tmp_path, model):
    """Box prompts through the model's own forward and post-processing; every scope merges and saves FLOPs."""
    baseline = run(tmp_path, f"model={model}", "strategy=none", "limit=2")
    assert baseline["metrics"]["fid_iou"] == 1.0 and baseline["metrics"]["emb_cos"] == pytest.approx(1.0)
    assert baseline["objects"] > 0 and baseline["flops"]["by_operator"]["scaled_dot_product_attention"] > 0
    for scope in ("attn", "block", "span"):
        record = run(tmp_path, f"model={model}", "strategy=tome", f"strategy.scope={scope}", "limit=2")
        assert {block["scope"] for block in record["blocks"]["layers"].values()} == {scope}
        assert 0.0 < record["metrics"]["emb_cos"] < 1.0 and 0.0 <= record["metrics"]["fid_iou"] <= 1.0, scope
        assert record["flops"]["ratio"] < 1.0 and record["flops"]["dense_gflops"] == baseline["flops"]["gflops"]
    assert (tmp_path / "results.md").read_text().count(f"| {model} | random | synthetic |") == 4


@pytest.mark.parametrize(("hf", "research"), [("hf_sam_tiny", "sam_tiny"), ("hf_sam2_tiny", "sam2_tiny")])
def test_dense_flops_equal_the_research_package_models(tmp_path, hf, research):
    """Same architecture, same count: every operator but the neck's LayerNorm2d, which segment_anything writes
    as elementwise ops (uncounted) and transformers as a layer norm; attention is SDPA in one, matmuls in the other."""
    ours = run(tmp_path, f"model={hf}", "strategy=none", "limit=1")["flops"]["by_operator"]
    theirs = run(tmp_path, f"model={research}", "strategy=none", "limit=1")["flops"]["by_operator"]
    attention = ours.pop("scaled_dot_product_attention")
    assert attention == theirs.pop("matmul", theirs.pop("scaled_dot_product_attention", None))
    neck_norm = ours["layer_norm"] - theirs["layer_norm"]
    assert 0 <= neck_norm <= 2 * 32 * 16 * 16 * 5  # two LayerNorm2d of the 32x16x16 neck maps at most
    assert {k: v for k, v in ours.items() if k != "layer_norm"} == {
        k: v for k, v in theirs.items() if k != "layer_norm"
    }


def test_hiera_configs_follow_the_official_yamls():
    """HF Hiera trunks built from sam2's yamls have sam2's defaults and its trunk's parameter count."""
    from sam2.modeling.backbones.hieradet import Hiera

    from tomeplug_eval.architectures import instantiate_sam2, sam2_config

    defaults = inspect.signature(Hiera).parameters
    assert {key: tuple(defaults[key].default) if key != "embed_dim" and key != "num_heads" else defaults[key].default
            for key in HIERA_DEFAULTS} == HIERA_DEFAULTS  # fmt: skip
    config = "sam2.1/sam2.1_hiera_t.yaml"
    trunk = instantiate_sam2(sam2_config(config).image_encoder.trunk)
    ours = hf_sam2(config).vision_encoder.backbone
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in trunk.parameters())
    assert len(ours.blocks) == len(trunk.blocks) and ours.stage_ends == list(trunk.stage_ends)
    assert [b.window_size for b in ours.blocks] == [b.window_size for b in trunk.blocks]


def test_from_pretrained_folder_loads_strictly(tmp_path):
    torch.manual_seed(1)
    saved = build_model("hf_sam_tiny")
    saved.save_pretrained(tmp_path / "sam-tiny")
    loaded = build_model("hf_sam_tiny", checkpoint=tmp_path / "sam-tiny")
    expected = saved.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    with pytest.raises(PretrainedFolderError, match="architecture is not 'hf_sam_hq_tiny'|does not load strictly"):
        build_model("hf_sam_hq_tiny", checkpoint=tmp_path / "sam-tiny")
    with pytest.raises(PretrainedFolderError, match="no config.json.*huggingface-cli download"):
        build_model("hf_sam_tiny", checkpoint=tmp_path)


def test_official_folder_is_found_inside_a_checkpoint_folder(tmp_path):
    """``checkpoint=DIR`` with the official folder name inside (as in sweeps over models), and the hint."""
    folder = tmp_path / MODELS["hf_sam_vit_b"].checkpoint
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_checkpoint("hf_sam_vit_b", tmp_path) == folder
    assert resolve_checkpoint("hf_sam_vit_b", folder) == folder
    with pytest.raises(FileNotFoundError, match="huggingface-cli download facebook/sam-vit-base"):
        build_model("hf_sam_vit_b", checkpoint=tmp_path / "missing")


def test_attn_implementation_is_a_model_option(tmp_path):
    eager = run(tmp_path, "model=hf_sam_tiny", "model.attn_implementation=eager", "strategy=none", "limit=1")
    sdpa = run(tmp_path, "model=hf_sam_tiny", "strategy=none", "limit=1")
    assert eager["flops"]["by_operator"].get("scaled_dot_product_attention") is None  # matmuls, not SDPA
    assert eager["metrics"]["miou"] == pytest.approx(sdpa["metrics"]["miou"], abs=1e-6)
    with pytest.raises(ValueError, match="attn_implementation must be 'eager' or 'sdpa'"):
        run(tmp_path, "model=hf_sam_tiny", "model.attn_implementation=flash", "strategy=none", "limit=1")

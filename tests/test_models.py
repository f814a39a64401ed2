"""Model builders: every registry entry resolves, tiny models build and load checkpoints strictly, clear errors."""

from __future__ import annotations

import pytest
import torch
from harness_helpers import CONF
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.singleton import Singleton

from tomeplug_eval import architectures, model_catalog
from tomeplug_eval.model_catalog import MODELS, CheckpointError, build_model, load_checkpoint, resolve_checkpoint

TINY = ("sam_tiny", "hq_sam_tiny", "sam2_tiny", "sam3_tiny")
OFFICIAL_FILES = {
    "sam_vit_b": "sam_vit_b_01ec64.pth", "sam_vit_l": "sam_vit_l_0b3195.pth", "sam_vit_h": "sam_vit_h_4b8939.pth",
    "hq_sam_vit_b": "sam_hq_vit_b.pth", "hq_sam_vit_l": "sam_hq_vit_l.pth", "hq_sam_vit_h": "sam_hq_vit_h.pth",
    "sam2_hiera_t": "sam2_hiera_tiny.pt", "sam2_hiera_s": "sam2_hiera_small.pt",
    "sam2_hiera_b+": "sam2_hiera_base_plus.pt", "sam2_hiera_l": "sam2_hiera_large.pt",
    "sam2.1_hiera_t": "sam2.1_hiera_tiny.pt", "sam2.1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus.pt", "sam2.1_hiera_l": "sam2.1_hiera_large.pt", "sam3": "sam3.pt",
}  # fmt: skip


HF_REPOS = {
    "hf_sam_vit_b": "facebook/sam-vit-base", "hf_sam_vit_l": "facebook/sam-vit-large",
    "hf_sam_vit_h": "facebook/sam-vit-huge", "hf_sam_hq_vit_b": "syscv-community/sam-hq-vit-base",
    "hf_sam_hq_vit_l": "syscv-community/sam-hq-vit-large", "hf_sam_hq_vit_h": "syscv-community/sam-hq-vit-huge",
    "hf_sam2_hiera_t": "facebook/sam2-hiera-tiny", "hf_sam2_hiera_s": "facebook/sam2-hiera-small",
    "hf_sam2_hiera_b+": "facebook/sam2-hiera-base-plus", "hf_sam2_hiera_l": "facebook/sam2-hiera-large",
    "hf_sam2.1_hiera_t": "facebook/sam2.1-hiera-tiny", "hf_sam2.1_hiera_s": "facebook/sam2.1-hiera-small",
    "hf_sam2.1_hiera_b+": "facebook/sam2.1-hiera-base-plus", "hf_sam2.1_hiera_l": "facebook/sam2.1-hiera-large",
    "hf_sam3": "facebook/sam3",
}  # fmt: skip
"""The Hugging Face repositories of the transformers models (their checkpoint: a from_pretrained folder)."""
ULTRALYTICS_FILES = {
    "ultralytics_sam_vit_b": ("sam_b.pt", "sam_vit_b"), "ultralytics_sam_vit_l": ("sam_l.pt", "sam_vit_l"),
    "ultralytics_sam_vit_h": ("sam_h.pt", "sam_vit_h"), "ultralytics_sam2_hiera_t": ("sam2_t.pt", "sam2_t"),
    "ultralytics_sam2_hiera_s": ("sam2_s.pt", "sam2_s"), "ultralytics_sam2_hiera_b+": ("sam2_b.pt", "sam2_b"),
    "ultralytics_sam2_hiera_l": ("sam2_l.pt", "sam2_l"), "ultralytics_sam2.1_hiera_t": ("sam2.1_t.pt", "sam2_t"),
    "ultralytics_sam2.1_hiera_s": ("sam2.1_s.pt", "sam2_s"), "ultralytics_sam2.1_hiera_b+": ("sam2.1_b.pt", "sam2_b"),
    "ultralytics_sam2.1_hiera_l": ("sam2.1_l.pt", "sam2_l"),
}  # fmt: skip
"""Ultralytics' checkpoint file and builder (``build_<builder>``) per model, as its ``sam_model_map``."""


@pytest.mark.parametrize("name", sorted(n for n in MODELS if n.startswith("hf_")))
def test_transformers_entries_name_their_repository(name):
    spec = MODELS[name]
    assert spec.family.startswith("hf_") and spec.pretrained_folder and (CONF / "model" / f"{name}.yaml").is_file()
    if name.endswith("_tiny"):
        assert spec.checkpoint is None
    else:
        assert f"{spec.url}{spec.checkpoint}" == f"https://huggingface.co/{HF_REPOS[name]}"


@pytest.mark.parametrize("name", sorted(n for n in MODELS if n.startswith("ultralytics_")))
def test_ultralytics_entries_use_its_files_and_builders(name):
    from ultralytics.models.sam import build

    spec = MODELS[name]
    assert spec.family.startswith("ultralytics_") and (CONF / "model" / f"{name}.yaml").is_file()
    if name.endswith("_tiny"):
        assert spec.checkpoint is None
        return
    file, builder = ULTRALYTICS_FILES[name]
    assert spec.checkpoint == file and build.sam_model_map[file] is getattr(build, f"build_{builder}")
    assert spec.build.args == (builder,) and spec.state_dict_key == "model"


@pytest.mark.parametrize("name", sorted(n for n in MODELS if not n.startswith(("hf_", "ultralytics_"))))
def test_every_entry_resolves_with_its_official_file_and_a_harness_config(name):
    spec = MODELS[name]
    assert spec.family in ("sam", "hq_sam", "sam2", "sam3") and spec.checkpoint == OFFICIAL_FILES.get(name)
    assert (CONF / "model" / f"{name}.yaml").is_file()
    if name in TINY:
        return
    if spec.family == "sam2":  # the yaml the builder instantiates: a Hiera trunk, checkpoint under "model"
        cfg = architectures.sam2_config(spec.source)
        assert cfg.image_encoder.trunk._target_.endswith("Hiera") and spec.state_dict_key == "model"
        assert cfg.sam_mask_decoder_extra_args.dynamic_multimask_via_stability is True
    elif spec.family == "sam3":  # sam3's builder (not run: the model is big); sam3.pt's layout renamed
        assert spec.build is architectures.sam3_image and spec.rename is model_catalog.sam3_state_dict
    else:  # the official registry entry the builder calls (not instantiated: ViT-H is big)
        package, size = spec.source.split(":")
        assert size in __import__(package, fromlist=["sam_model_registry"]).sam_model_registry


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_build_and_load_a_saved_checkpoint_strictly(name, tmp_path):
    if MODELS[name].family == "sam3":
        pytest.importorskip("sam3")
    with pytest.warns(model_catalog.RandomWeightsWarning, match="RANDOM"):
        model = build_model(name)
    state = model.state_dict()
    torch.save({"model": state} if name == "sam2_tiny" else state, tmp_path / "tiny.pt")
    loaded = build_model(name, tmp_path / "tiny.pt")
    assert not loaded.training
    assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())
    other = "sam_tiny" if name != "sam_tiny" else "sam2_tiny"
    with pytest.raises(CheckpointError, match=rf"does not fit model {other!r}.*(missing|unexpected) keys"):
        build_model(other, tmp_path / "tiny.pt")


def test_checkpoint_errors_name_file_problem_and_fix(tmp_path):
    model = MODELS["sam_tiny"].build()
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_checkpoint(model, tmp_path / "absent.pth", "tiny")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pth.*corrupt"):
        load_checkpoint(model, tmp_path / "corrupt.pth", "tiny")
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    state["image_encoder.pos_embed"] = torch.zeros(1, 2, 2, 64)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth.*unexpected keys \['extra.weight'\].*pos_embed"):
        load_checkpoint(model, tmp_path / "other.pth", "tiny")
    with pytest.raises(FileNotFoundError, match="download .*sam_vit_l_0b3195.pth"):
        load_checkpoint(torch.nn.Linear(1, 1), "nowhere/sam_vit_l_0b3195.pth", "vit_l")


def test_checkpoint_values_and_aliases(tmp_path, monkeypatch):
    monkeypatch.setattr(model_catalog, "CHECKPOINT_DIR", tmp_path)
    assert resolve_checkpoint("sam_vit_b", "auto") is None and resolve_checkpoint("sam_vit_b", "random") is None
    (tmp_path / "sam_vit_b_01ec64.pth").touch()
    assert resolve_checkpoint("vit_b", "auto") == tmp_path / "sam_vit_b_01ec64.pth"
    assert resolve_checkpoint("sam2.1_hiera_l", tmp_path) == tmp_path / "sam2.1_hiera_large.pt"
    assert resolve_checkpoint("sam_tiny", "auto") is None
    assert model_catalog.canonical_name("vit_l") == "sam_vit_l" and model_catalog.canonical_name("tiny") == "sam_tiny"
    with pytest.raises(KeyError, match="unknown model 'vit_x'.*sam2.1_hiera_b\\+"):
        model_catalog.canonical_name("vit_x")


def test_building_sam2_leaves_hydra_state_alone():
    state = Singleton.get_state()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            architectures.tiny_sam2()  # imports sam2, which initialises hydra only when nobody has
            assert compose("harness", overrides=["model=sam2_tiny"]).model.name == "sam2_tiny"
    finally:
        Singleton.set_state(state)


def test_sam2_builders_take_a_model_class_and_fields():
    with pytest.warns(model_catalog.RandomWeightsWarning):
        video = build_model("sam2_tiny", target="sam2.sam2_video_predictor.SAM2VideoPredictor", fill_hole_area=8)
    assert type(video).__name__ == "SAM2VideoPredictor" and video.fill_hole_area == 8

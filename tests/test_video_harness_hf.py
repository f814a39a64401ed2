"""The video task on transformers' SAM 2 (``hf_sam2_tiny`` as ``Sam2VideoModel``): rows, fidelity, FLOPs, passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from harness_helpers import run, run_video  # noqa: E402
from tiny_models import _randomise  # noqa: E402

from tomeplug_eval.flops import count_flops  # noqa: E402
from tomeplug_eval.hf_architectures import hf_sam2, sam2_video_fields  # noqa: E402
from tomeplug_eval.model_catalog import RandomWeightsWarning, build_model  # noqa: E402
from tomeplug_eval.video import VideoItem, read_predictions, synthetic_video  # noqa: E402
from tomeplug_eval.video.hf_vos import run_hf_vos  # noqa: E402


def count(module: torch.nn.Module) -> int:
    """The number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def video_model():
    """The harness's tiny ``Sam2VideoModel`` with non-trivial random weights, its object-score head biased so
    objects count as present (at random it says absent: every tracked mask would be empty, fidelity trivially 1)."""
    with pytest.warns(RandomWeightsWarning):
        model = _randomise(build_model("hf_sam2_tiny", checkpoint=None, video=True), seed=0)
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias += 5.0
    return model


@pytest.fixture(scope="module")
def weights(video_model, tmp_path_factory):
    """``video_model`` as a ``from_pretrained`` folder, the harness's ``checkpoint=``."""
    folder = tmp_path_factory.mktemp("weights") / "hf-sam2-tiny-video"
    video_model.save_pretrained(folder)
    return folder


def test_baseline_and_merged_rows(tmp_path, weights, video_model):
    """Same protocol and record as the research path; the video model's encoder (its wider neck) is what is
    counted, not the image model's of the same name, whose count is cached in the same folder first."""
    image = run(tmp_path, "model=hf_sam2_tiny", "strategy=none", "limit=1")
    model = ["model=hf_sam2_tiny", f"checkpoint={weights}"]
    none = run_video(tmp_path, *model, "strategy=none")
    assert none["task"] == "video" and none["weights"] == "checkpoint"
    assert (none["videos"], none["frames"]) == (2, 8) and none["objects"] >= 2
    assert none["metrics"]["fidelity_J"] == 1.0 and 0.0 <= none["metrics"]["J&F"] <= 1.0
    assert none["latency"]["per"] == "frame" and none["latency"]["samples"] == 8 and none["latency"]["encoder_s"] > 0
    assert len(list((tmp_path / "predictions" / none["items_key"]).glob("*/*.png"))) == 8
    dense = count_flops(video_model.vision_encoder, (torch.zeros(1, 3, 128, 128),)).gflops
    assert none["flops"]["gflops"] == pytest.approx(dense) and dense != image["flops"]["gflops"]
    for scope in ("attn", "span"):
        tome = run_video(tmp_path, *model, "strategy=tome", f"strategy.scope={scope}")
        assert {block["scope"] for block in tome["blocks"]["layers"].values()} == {scope}
        assert 0.0 <= tome["metrics"]["fidelity_J"] < 1.0 and 0.0 <= tome["metrics"]["J&F"] <= 1.0, scope
        assert tome["flops"]["ratio"] < 1.0 and tome["flops"]["dense_gflops"] == none["flops"]["gflops"]
    table = (tmp_path / "results.md").read_text()
    assert table.count("| hf_sam2_tiny | checkpoint | synthetic_video |") == 3


def test_late_object_gets_its_own_pass(video_model, tmp_path, capsys):
    """An object prompted on frame 2 is tracked from there in a second pass; one id per pixel; PNGs lossless;
    transformers' propagation bar shown with ``progress``."""
    item = synthetic_video(count=1, frames=4, size=(48, 64), seed=3, cache_dir=tmp_path / "cache")[0]
    first = item.object_ids[0]
    masks = {
        f: {1: objects[first], 2: objects[first] if f >= 2 else np.zeros(item.size, bool)}
        for f, objects in item.masks.items()
    }
    late = VideoItem(item.name, item.frame_paths, masks, prompts={1: 0, 2: 2}, size=item.size)
    result = run_hf_vos(video_model, late, output_dir=tmp_path / "out", progress=True)
    assert "propagate in video" in capsys.readouterr().err
    assert len(result.encoder_seconds) == 4 + 2  # frames 0..3 for object 1, then 2..3 for object 2
    assert sorted(result.masks) == [0, 1, 2, 3] and all(sorted(o) == [1, 2] for o in result.masks.values())
    assert not result.masks[0][2].any() and not result.masks[1][2].any()  # not tracked before its prompt
    assert result.masks[2][2].any() and any(result.masks[f][1].any() for f in (1, 2, 3))
    assert not any((objects[1] & objects[2]).any() for objects in result.masks.values())
    stored = read_predictions(tmp_path / "out", late)
    assert all(np.array_equal(stored[f][o], result.masks[f][o]) for f in result.masks for o in (1, 2))


@pytest.mark.parametrize("version", ["sam2", "sam2.1"])
def test_video_model_has_the_research_model_parameters(version):
    """``Sam2VideoModel`` from an official yaml has SAM 2's video model's parameter count, part by part (so an
    official folder's architecture check passes): SAM 2.1's occlusion embedding and object-pointer temporal
    projection exist only in 2.1, as transformers' conversion of the official checkpoints sets them."""
    from tomeplug_eval.architectures import sam2_model

    config = f"{version}/{version}_hiera_t.yaml"
    ours, theirs = hf_sam2(config, video=True), sam2_model(config)
    parts = {"vision_encoder": "image_encoder", "memory_attention": "memory_attention",
             "memory_encoder": "memory_encoder", "mask_decoder": "sam_mask_decoder"}  # fmt: skip
    for hf, research in parts.items():
        assert count(getattr(ours, hf)) == count(getattr(theirs, research)), hf
    assert count(ours) == count(theirs)
    fields = sam2_video_fields(config)
    flags = ("enable_occlusion_spatial_embedding", "enable_temporal_pos_encoding_for_object_pointers")
    assert [fields[f] for f in flags] == [version == "sam2.1"] * 2 and fields["image_size"] == 1024


def test_a_transformers_model_without_a_video_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="video datasets need a SAM 2 model; got hf_sam3_tiny .*hf_sam2_tiny"):
        run_video(tmp_path, "model=hf_sam3_tiny")


def test_memory_layers_merge_the_video_models_memory_attention(tmp_path, weights):
    """memory_layers on transformers' Sam2VideoModel (adapter hf_sam2_memory_attention), as on research SAM 2:
    the frame split timed, memory-only merging changes the masks, the encoder unpatched, memory_r recorded."""
    from test_video_harness_memory import check_split

    model = ["model=hf_sam2_tiny", f"checkpoint={weights}"]
    none = run_video(tmp_path, *model, "strategy=none")
    memory = run_video(
        tmp_path, *model, "strategy=tome", "r=0.5", "strategy.scope=span", "layers=[]", "memory_layers=all"
    )
    both = run_video(tmp_path, *model, "strategy=tome", "r=0.5", "strategy.memory_r=0.5", "memory_layers=all")
    for record in (none, memory, both):
        check_split(record)
    assert none["metrics"]["fidelity_J"] == 1.0
    assert memory["metrics"]["fidelity_J"] < 1.0 and both["metrics"]["fidelity_J"] < 1.0
    assert memory["blocks"]["layers"] == {} and set(memory["blocks"]["memory_attention"]["layers"]) == {"0"}
    assert memory["flops"]["gflops"] == none["flops"]["gflops"]  # the encoder is not merged
    assert both["flops"]["ratio"] < 1.0 and both["blocks"]["memory_attention"]["layers"]["0"]["memory_r"] == 0.5
    assert "| tome | []; memory all |" in (tmp_path / "results.md").read_text()

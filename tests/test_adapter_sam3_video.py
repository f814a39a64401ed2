"""SAM 3 (sam3) tracker and video model on a merged ViT: a prompt on frame 0, masks on every frame.

Models are sam3's own builders at random weights, tiny ViT (``tiny_models.tiny_sam3_tracker``: ``build_tracker``
with its backbone, the ``Sam3TrackerPredictor`` of point, box and mask prompts; ``tiny_models.tiny_sam3_video``:
``build_sam3_video_model``, whose detector holds the ViT and feeds the tracker). Each runs sam3's own video
inference (``init_state``, prompts, ``propagate_in_video``) on three synthetic frames, on the CPU; the conformance
kit runs on the tracker too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_sam3_tracker, tiny_sam3_video

import tomeplug

pytest.importorskip("sam3")

from PIL import Image  # noqa: E402
from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor  # noqa: E402

SCOPES = ["attn", "block", "span"]
FRAMES, HEIGHT, WIDTH = 3, 90, 120


def object_present(tracker: torch.nn.Module) -> torch.nn.Module:
    """Bias the tracker's object-score head to "present": at random weights it may call the object absent,
    and sam3 then outputs empty masks (every logit at its no-object score) on every frame."""
    with torch.no_grad():
        tracker.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return tracker


@pytest.fixture(scope="module")
def tracker():
    return object_present(tiny_sam3_tracker())


@pytest.fixture(scope="module")
def video_model():
    model = tiny_sam3_video()
    object_present(model.tracker)
    model.fill_hole_area = 0  # sam3's own off switch: its hole filling needs scikit-image on the CPU
    return model


def run_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an accelerator: sam3's video inference moves tensors with ``.cuda()`` and pins small ones (no-ops
    here), and the video model's tracker keeps its states on CUDA unless offloaded (offloaded here)."""
    if torch.cuda.is_available():
        return
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: self)
    init_state = Sam3TrackerPredictor.init_state
    monkeypatch.setattr(
        Sam3TrackerPredictor,
        "init_state",
        lambda self, *args, **kwargs: init_state(self, *args, **{**kwargs, "offload_state_to_cpu": True}),
    )


@pytest.fixture
def on_cpu(monkeypatch):
    """:func:`run_on_cpu` for one test."""
    run_on_cpu(monkeypatch)


def synthetic_frames() -> list[Image.Image]:
    generator = np.random.default_rng(0)
    return [Image.fromarray(generator.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)) for _ in range(FRAMES)]


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """A JPEG folder (what ``Sam3TrackerPredictor.init_state`` reads): three random 90x120 frames."""
    folder = tmp_path_factory.mktemp("frames")
    for index, frame in enumerate(synthetic_frames()):
        frame.save(folder / f"{index:05d}.jpg")
    return str(folder)


def track(tracker, video_folder, prompt="point"):
    """sam3's tracker API: a prompt for object 1 on frame 0, then propagation; {frame: (1, 1, H, W) mask logits}."""
    state = tracker.init_state(video_path=video_folder, offload_video_to_cpu=True, offload_state_to_cpu=True)
    if prompt == "mask":
        mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
        mask[20:60, 30:90] = True
        tracker.add_new_mask(state, 0, 1, mask)
    else:
        point, box = torch.tensor([[0.5, 0.5]]), torch.tensor([0.2, 0.2, 0.7, 0.8])  # relative to the frame
        where = dict(points=point, labels=torch.tensor([1])) if prompt == "point" else dict(box=box)
        tracker.add_new_points_or_box(state, 0, 1, **where)
    frames = tracker.propagate_in_video(
        state, start_frame_idx=0, max_frame_num_to_track=FRAMES, reverse=False, tqdm_disable=True,
        propagate_preflight=True,
    )  # fmt: skip
    return {index: masks.clone() for index, _, _, masks, _ in frames}


def assert_masks_like(masks, reference):
    """Masks on every frame, finite, with the dense model's shapes."""
    assert sorted(masks) == sorted(reference) == list(range(FRAMES))
    for index in reference:
        assert masks[index].shape == reference[index].shape == (1, 1, HEIGHT, WIDTH)
        assert torch.isfinite(masks[index]).all()


@pytest.mark.parametrize("scope", SCOPES)
def test_tracker_r0_exact_merged_differs_unpatch_restores(scope, tracker, video_folder, on_cpu):
    reference = track(tracker, video_folder)
    with tomeplug.patch(tracker, "tome", r=0.0, scope=scope) as handle:
        assert handle.adapter == "sam3_vit"
        masks = track(tracker, video_folder)
        assert all(torch.equal(masks[index], reference[index]) for index in reference)
    with tomeplug.patch(tracker, "tome", r=0.5, scope=scope):
        merged_class = type(tracker.backbone.vision_backbone.trunk).__name__
        masks = track(tracker, video_folder)
    assert_masks_like(masks, reference)
    assert all(not torch.equal(masks[index], reference[index]) for index in reference)  # each frame's ViT merged
    assert merged_class.startswith("Merging") == (scope == "span")
    assert type(tracker.backbone.vision_backbone.trunk).__name__ == "ViT"
    unpatched = track(tracker, video_folder)
    assert all(torch.equal(unpatched[index], reference[index]) for index in reference)


@pytest.mark.parametrize("prompt", ["box", "mask"])
def test_tracker_box_and_mask_prompts_on_a_span_patched_model(prompt, tracker, video_folder, on_cpu):
    reference = track(tracker, video_folder, prompt)
    with tomeplug.patch(tracker, "tome", r=0.5, scope="span"):
        masks = track(tracker, video_folder, prompt)
    assert_masks_like(masks, reference)
    assert any(not torch.equal(masks[index], reference[index]) for index in reference)


def segment_video(model):
    """sam3's video API: a box prompt on frame 0 and a pass over the video, then object 1 added by a point on
    frame 0 and propagated by the tracker; {frame: (object ids, (N, H, W) boolean masks)}."""
    state = model.init_state(synthetic_frames(), offload_video_to_cpu=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # sam3 runs the video model in bf16 autocast (on CUDA)
        model.add_prompt(state, 0, boxes_xywh=[[0.3, 0.3, 0.4, 0.4]], box_labels=[1])
        for _ in model.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=FRAMES):
            pass
        model.add_prompt(state, 0, points=torch.tensor([[0.5, 0.5]]), point_labels=torch.tensor([1]), obj_id=1)
        frames = model.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=FRAMES)
        return {index: (out["out_obj_ids"].tolist(), out["out_binary_masks"]) for index, out in frames}


@pytest.fixture(scope="module")
def video_reference(video_model):
    """The dense video model's output (one mask of object 1 on every frame)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_on_cpu(monkeypatch)
        reference = segment_video(video_model)
    assert sorted(reference) == list(range(FRAMES))
    for ids, masks in reference.values():
        assert ids == [1] and masks.shape == (1, HEIGHT, WIDTH) and masks.dtype == np.bool_ and masks.any()
    return reference


def test_video_model_r0_is_exact_and_unpatch_restores(video_model, video_reference, on_cpu):
    """The video model's one ViT (in its detector; the tracker has no backbone) is found and patched."""
    assert video_model.tracker.backbone is None
    with tomeplug.patch(video_model, "tome", r=0.0, scope="span") as handle:
        assert handle.adapter == "sam3_vit"
        assert type(video_model.detector.backbone.vision_backbone.trunk).__name__.startswith("Merging")
        exact = segment_video(video_model)
    unpatched = segment_video(video_model)
    for index, (ids, masks) in video_reference.items():
        for other in (exact, unpatched):
            assert other[index][0] == ids and np.array_equal(other[index][1], masks)


def test_video_model_point_prompt_on_a_span_patched_model(video_model, video_reference, on_cpu):
    """Merged tokens in the detector's ViT: masks of the prompted object on every frame, each one changed."""
    with tomeplug.patch(video_model, "tome", r=0.5, scope="span"):
        merged = segment_video(video_model)
    for index, (ids, masks) in video_reference.items():
        assert merged[index][0] == ids and merged[index][1].shape == masks.shape and merged[index][1].any()
        assert not np.array_equal(merged[index][1], masks)


@pytest.mark.parametrize("scope", SCOPES)
def test_check_adapter_on_the_tracker(scope):
    """The conformance kit on the tracker built by sam3's builder (the ViT found in its backbone)."""
    from tomeplug.testing import check_adapter

    image = torch.randn(1, 3, 140, 140, generator=torch.Generator().manual_seed(4))
    check_adapter(
        "sam3_vit",
        tiny_sam3_tracker,
        lambda: image,
        run=lambda model, x: model.forward_image(x)["backbone_fpn"],
        scope=scope,
    )

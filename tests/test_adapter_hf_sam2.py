"""The transformers SAM 2 adapter (hf_sam2_hiera) on tiny models built from transformers' configs.

An independent reference: sam2's own Hiera with the same weights, patched with sam2_hiera, merges the same.
End to end: Sam2Processor + Sam2Model with point and box prompts, Sam2VideoProcessor + Sam2VideoModel
tracking an object over synthetic frames, both on patched models.
"""

from __future__ import annotations

import contextlib
import copy
import pickle

import pytest
import torch
from tiny_hf_sam2 import sam2_config, sam2_processor, synthetic_frames, tiny_hf_hiera, tiny_hf_sam2
from tiny_models import tiny_hiera

import tomeplug
from tomeplug.testing import check_adapter

IMPLEMENTATIONS = ("eager", "sdpa")
SCOPES = ("attn", "block", "span")
IMAGE = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference_hiera():
    """sam2's Hiera (tiny_hiera: the tiny HF trunk's layout) in eval mode."""
    return tiny_hiera()


def hf_twin(reference: torch.nn.Module, implementation: str) -> torch.nn.Module:
    """transformers' Sam2HieraDetModel holding the reference's weights (same order, other names)."""
    hf = tiny_hf_hiera(implementation, seed=1)
    names = list(hf.state_dict())
    assert [tuple(v.shape) for v in hf.state_dict().values()] == [
        tuple(v.shape) for v in reference.state_dict().values()
    ]
    hf.load_state_dict(dict(zip(names, reference.state_dict().values(), strict=True)))
    return hf


def stage_maps(hf_output) -> list[torch.Tensor]:
    """A Sam2HieraDetModel's stage outputs as sam2's Hiera returns them: (B, C, H, W)."""
    return [t.permute(0, 3, 1, 2) for t in hf_output.intermediate_hidden_states]


def assert_close_all(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("scope", SCOPES)
def test_the_contract_holds_for_each_attention_implementation(implementation, scope):
    check_adapter(
        "hf_sam2_hiera",
        lambda: tiny_hf_sam2(implementation).vision_encoder,
        lambda: IMAGE,
        strategy="pitome",
        scope=scope,
    )


@pytest.mark.parametrize("prop_attn", [False, True])
@pytest.mark.parametrize("strategy", ["tome", "pitome"])
@pytest.mark.parametrize("scope", SCOPES)
def test_sdpa_trunk_merges_as_sam2_hiera_on_sam2s_hiera(reference_hiera, scope, strategy, prop_attn):
    """The whole trunk (windowed, padded, global and q-pooling blocks; spans) merged by both adapters."""
    hf = hf_twin(reference_hiera, "sdpa")
    with torch.no_grad():
        dense = reference_hiera(IMAGE)
        assert_close_all(stage_maps(hf(IMAGE)), dense)
        options = dict(r=0.4, scope=scope, prop_attn=prop_attn)
        with tomeplug.patch(reference_hiera, strategy, **options), tomeplug.patch(hf, strategy, **options) as handle:
            expected, got = reference_hiera(IMAGE), stage_maps(hf(IMAGE))
    assert handle.adapter == "hf_sam2_hiera"
    assert all(not torch.allclose(a, b, atol=1e-3) for a, b in zip(expected, dense, strict=True))
    assert_close_all(got, expected)


def block_inputs(hiera: torch.nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """Every block's input in sam2's dense Hiera: (B, H, W, C) maps."""
    x = hiera.patch_embed(image)
    x = x + hiera._get_pos_embed(x.shape[1:3])
    inputs = []
    for block in hiera.blocks:
        inputs.append(x)
        x = block(x)
    return inputs


@pytest.mark.parametrize("prop_attn", [False, True])
@pytest.mark.parametrize("scope", ["attn", "block"])
def test_eager_blocks_merge_as_sam2_hiera_on_the_same_input(reference_hiera, scope, prop_attn):
    """Eager attention rounds differently from SDPA (a near tie may flip a later plan), so each block is
    compared on the same input: every kind (windowed, padded, global, q-pooling) of the 12."""
    hf = hf_twin(reference_hiera, "eager")
    options = dict(r=0.4, scope=scope, prop_attn=prop_attn)
    with torch.no_grad():
        inputs = block_inputs(reference_hiera, IMAGE)
        with tomeplug.patch(reference_hiera, "pitome", **options), tomeplug.patch(hf, "pitome", **options):
            for index, x in enumerate(inputs):
                expected, got = reference_hiera.blocks[index](x), hf.blocks[index](x)
                torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4, msg=f"block {index}")


def test_eager_span_merges_as_sam2_hiera(reference_hiera):
    """Stage 0 (blocks 0 and 1: one span on one plan) gets the same input in both, so eager matches too."""
    hf = hf_twin(reference_hiera, "eager")
    options = dict(r=0.4, scope="span", layers=[0, 1])
    with torch.no_grad(), tomeplug.patch(reference_hiera, "tome", **options), tomeplug.patch(hf, "tome", **options):
        expected, got = reference_hiera(IMAGE)[0], stage_maps(hf(IMAGE))[0]
        assert hf.blocks[0].tomeplug_run == (hf.blocks[0], hf.blocks[1]) and hf.blocks[1].tomeplug_run == ()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_span_keeps_the_trunks_interface():
    """A span-patched trunk still returns transformers' output: every block's hidden state (a span's inner
    blocks pass its output on), the stage outputs, and a tuple with return_dict=False."""
    hf = tiny_hf_hiera()
    with torch.no_grad():
        dense = hf(IMAGE, output_hidden_states=True)
        with tomeplug.patch(hf, "tome", r=0.4, scope="span"):
            merged = hf(IMAGE, output_hidden_states=True)
            as_tuple = hf(IMAGE, return_dict=False)
    assert type(merged) is type(dense) and len(merged.hidden_states) == len(dense.hidden_states) == 13  # input too
    assert torch.equal(merged.hidden_states[1], merged.hidden_states[2])  # blocks 0 and 1: one span
    assert torch.equal(merged.intermediate_hidden_states[0], merged.hidden_states[2])
    assert torch.equal(as_tuple[0], merged.last_hidden_state)
    assert not torch.allclose(merged.last_hidden_state, dense.last_hidden_state, atol=1e-3)


def test_matches_the_models_holding_one_trunk(registry, reference_hiera):
    adapter = registry.adapter("hf_sam2_hiera")
    image_model, video_model = tiny_hf_sam2(), tiny_hf_sam2(video=True)
    for model in (image_model, image_model.vision_encoder, image_model.vision_encoder.backbone, video_model):
        assert adapter.matches(model) and len(adapter.blocks(model)) == 12
    assert not adapter.matches(reference_hiera) and not adapter.matches(image_model.mask_decoder)
    both = torch.nn.ModuleList([image_model.vision_encoder, video_model.vision_encoder])
    both.__class__ = type("TwoTrunks", (torch.nn.ModuleList,), {"__module__": "transformers.fake"})
    assert not adapter.matches(both)
    with pytest.raises(ValueError, match="holds 2 Sam2HieraDetModels; patch each Sam2HieraDetModel"):
        adapter.blocks(both)


def test_a_sam3_tracker_configured_with_a_sam2_trunk():
    """transformers' SAM 3 trackers hold whatever vision model their config names (by default SAM 3's ViT,
    not a Hiera): configured with SAM 2's vision model they hold a Sam2HieraDetModel, which merges."""
    import transformers as tf

    image_config = sam2_config()
    parts = {name: getattr(image_config, name) for name in ("prompt_encoder_config", "mask_decoder_config")}
    model = tf.Sam3TrackerModel._from_config(tf.Sam3TrackerConfig(vision_config=image_config.vision_config, **parts))
    inputs = dict(
        pixel_values=IMAGE[:1], input_points=torch.tensor([[[[30.0, 40.0]]]]), input_labels=torch.tensor([[[1]]])
    )
    with torch.no_grad():
        dense = model.eval()(**inputs).pred_masks
        with tomeplug.patch(model, "tome", r=0.4, scope="span") as handle:
            merged = model(**inputs).pred_masks
    assert handle.adapter == "hf_sam2_hiera" and merged.shape == dense.shape and not torch.equal(merged, dense)


def test_a_patched_model_pickles():
    model = tiny_hf_sam2().vision_encoder
    tomeplug.patch(model, "tome", r=0.4, scope="span")
    with torch.no_grad():
        before = model(IMAGE).last_hidden_state
        after = pickle.loads(pickle.dumps(model))(IMAGE).last_hidden_state
    assert torch.equal(before, after)


def test_prop_attn_needs_an_implementation_that_adds_a_bias(monkeypatch):
    """A registered attention function is what the merged attention calls; one that cannot take the
    log(size) bias raises with the fix, instead of dropping it."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def recording(module, q, k, v, attention_mask, **kwargs):
        calls.append(q.shape)
        return sdpa_attention_forward(module, q, k, v, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "recording", recording)
    hf = tiny_hf_hiera()
    hf.config._attn_implementation = "recording"
    with torch.no_grad():
        with tomeplug.patch(hf, "tome", r=0.4, scope="block"):
            hf(IMAGE)
        assert len(calls) == 12
        with tomeplug.patch(hf, "tome", r=0.4, prop_attn=True), pytest.raises(ValueError, match="'eager' or 'sdpa'"):
            hf(IMAGE)


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def image_model(request):
    return tiny_hf_sam2(request.param)


@pytest.mark.parametrize("prompt", ["points", "box"])
def test_processor_and_model_end_to_end(image_model, prompt):
    """Sam2Processor + Sam2Model with a point or a box prompt on a patched model: r=0 is the dense model,
    r>0 gives finite masks of the same shapes that differ; the processor post-processes them."""
    processor = sam2_processor()
    image = synthetic_frames(1)[0].numpy()
    prompts = dict(input_points=[[[[40, 45]]]], input_labels=[[[1]]]) if prompt == "points" else {}
    prompts = prompts or dict(input_boxes=[[[20, 30, 50, 60]]])
    inputs = processor(images=image, return_tensors="pt", **prompts)
    model = copy.deepcopy(image_model)

    def masks(**options) -> torch.Tensor:
        with torch.no_grad(), tomeplug.patch(model, "pitome", **options):
            out = model(**inputs, multimask_output=False)
        assert out.iou_scores.isfinite().all()
        return out.pred_masks

    dense = masks(r=0.0)
    with torch.no_grad():
        unpatched = model(**inputs, multimask_output=False).pred_masks
    assert torch.equal(dense, unpatched)
    for scope in SCOPES:
        merged = masks(r=0.4, scope=scope)
        assert merged.shape == dense.shape and merged.isfinite().all() and not torch.equal(merged, dense)
    final = processor.post_process_masks(merged, inputs["original_sizes"])[0]
    assert final.shape[-2:] == image.shape[:2] and final.dtype == torch.bool


def track(model: torch.nn.Module, frames: list[torch.Tensor], **options) -> list[torch.Tensor]:
    """Each frame's mask logits for one object clicked on frame 0, tracked by a Sam2VideoModel (patched with
    ``options`` if any) in an inference session from Sam2VideoProcessor."""
    processor = sam2_processor(video=True)
    session = processor.init_video_session(video=[f.numpy() for f in frames], inference_device="cpu")
    processor.add_inputs_to_inference_session(
        session, frame_idx=0, obj_ids=1, input_points=[[[[40, 45]]]], input_labels=[[[1]]]
    )
    with torch.no_grad(), tomeplug.patch(model, "tome", **options) if options else contextlib.nullcontext():
        first = model(inference_session=session, frame_idx=0).pred_masks
        later = [out.pred_masks for out in model.propagate_in_video_iterator(session, start_frame_idx=1)]
    return [first, *later]


def test_video_model_tracks_on_a_patched_model():
    model, frames = tiny_hf_sam2(video=True), synthetic_frames(3)
    dense = track(model, frames)
    assert len(dense) == 3
    for scope in SCOPES:
        merged = track(model, frames, r=0.4, scope=scope)
        assert [m.shape for m in merged] == [d.shape for d in dense]
        assert all(m.isfinite().all() for m in merged)
        assert not any(torch.equal(m, d) for m, d in zip(merged, dense, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(track(model, frames, r=0.0), dense, strict=True))

"""Ultralytics' vendored SAM, SAM 2 and SAM 3 encoders: the same merging as the research packages, and the
``SAM(...)`` predictors on patched models.

Models are Ultralytics' own classes and builders at random weights and tiny sizes (``tiny_ultralytics``);
the research packages' tiny models (``tiny_models``) have the same dimensions, so one state dict loads into
both. ``tomeplug.testing.check_adapter`` runs on every scope through ``TINY_MODELS``
(``test_adapter_contract.py``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tiny_models as research
import tiny_ultralytics as ultra
import torch
from scope_helpers import IdentityConfig

import tomeplug

pytest.importorskip("ultralytics")

SCOPES = ["attn", "block", "span"]
PAIRS = {  # Ultralytics adapter: (its tiny model, the research package, its tiny model, its adapter, input)
    "ultralytics_sam_vit": (
        ultra.tiny_sam_encoder,
        "segment_anything",
        research.tiny_sam_encoder,
        "sam_vit",
        (2, 3, 256, 256),
    ),
    "ultralytics_sam2_hiera": (ultra.tiny_hiera, "sam2", research.tiny_hiera, "sam2_hiera", (2, 3, 128, 128)),
    "ultralytics_sam3_vit": (ultra.tiny_sam3_vit, "sam3", research.tiny_sam3_vit, "sam3_vit", (2, 3, 140, 140)),
}


def encode(model, x):
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, list) else [out]


@pytest.mark.parametrize("strategy", ["tome", "pitome"])
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("adapter", sorted(PAIRS))
def test_same_weights_merge_as_the_research_package(adapter, scope, strategy):
    """The research package's model under its adapter is the independent reference of the mapping."""
    build_ours, package, build_theirs, their_adapter, shape = PAIRS[adapter]
    pytest.importorskip(package)
    ours, theirs = build_ours(), build_theirs()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not missing and all(k.endswith(("freqs_cis", "relative_coords")) for k in unexpected)  # sam3's buffers
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    dense = encode(ours, x)
    with (
        tomeplug.patch(theirs, strategy, r=0.5, scope=scope) as reference,
        tomeplug.patch(ours, strategy, r=0.5, scope=scope) as handle,
    ):
        assert (reference.adapter, handle.adapter) == (their_adapter, adapter)
        expected, merged = encode(theirs, x), encode(ours, x)
    assert len(merged) == len(expected) == len(dense)
    for ours_out, their_out in zip(merged, expected, strict=True):
        torch.testing.assert_close(ours_out, their_out, atol=1e-4, rtol=1e-4)
    assert not all(torch.allclose(m, d) for m, d in zip(merged, dense, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(encode(ours, x), dense, strict=True))  # unpatched


def resized_sam_encoder():
    return ultra.tiny_sam_encoder(), torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(2))


def resized_sam3_vit():
    vit = ultra.tiny_sam3_vit()
    vit.set_imgsz([168, 168])  # the global blocks' RoPE and relative positions for a 12x12 grid
    return vit, torch.randn(1, 3, 168, 168, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("resized", [resized_sam_encoder, resized_sam3_vit])
def test_inputs_of_another_size_than_built(resized, scope):
    """Ultralytics' predictors run encoders at ``imgsz``: SAM's encoder resizes its absolute positions to the
    grid (12x12 at 192 px, built for 16x16), SAM 3's ViT is rebuilt by ``set_imgsz``. r = 0 is bit-exact
    (span scope swaps the encoder's loop) and an identity plan reproduces upstream."""
    model, x = resized()
    reference = encode(model, x)
    with tomeplug.patch(model, "tome", r=0.0, scope=scope):
        assert all(torch.equal(a, b) for a, b in zip(encode(model, x), reference, strict=True))
    with tomeplug.patch(model, IdentityConfig(r=0.5), scope=scope):
        for out, ref in zip(encode(model, x), reference, strict=True):
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def models():
    """Each kind's tiny whole model (built once: SAM 3's builder takes seconds), its ``SAM`` name and imgsz."""
    return {
        "sam": (ultra.tiny_sam(), "sam_b.pt", 256),
        "sam2": (ultra.tiny_sam2(), "sam2_t.pt", 128),
        "sam3": (ultra.tiny_sam3(), "sam3.pt", 140),
    }


def image():
    return (np.random.default_rng(0).random((100, 120, 3)) * 255).astype(np.uint8)


def predict(sam, imgsz, **prompts):
    """Masks (N, H, W) and boxes with scores (N, 6) of the first result; every mask kept (conf 0)."""
    result = sam(image(), imgsz=imgsz, conf=0.0, device="cpu", **prompts)[0]
    return result.masks.data, result.boxes.data


PROMPTS = {  # one object each
    "box": {"bboxes": [[10, 20, 80, 90]]},
    "points": {"points": [[[50, 40], [70, 60]]], "labels": [[1, 0]]},
}
ADAPTERS = {"sam": "ultralytics_sam_vit", "sam2": "ultralytics_sam2_hiera", "sam3": "ultralytics_sam3_vit"}


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("kind", ["sam", "sam2", "sam3"])
def test_sam_predictor_end_to_end_on_a_patched_model(models, kind, scope):
    """``SAM(...)`` with box and point prompts on a numpy image: masks of the image's size come out of a
    patched model; r = 0 gives the dense masks and scores, r > 0 other scores, unpatch the dense ones."""
    model, name, imgsz = models[kind]
    sam = ultra.sam_interface(model, name)
    for prompt in PROMPTS.values():
        masks, boxes = predict(sam, imgsz, **prompt)
        assert masks.shape == (1, 100, 120) and masks.dtype == torch.bool
        with tomeplug.patch(model, "tome", r=0.0, scope=scope) as handle:
            assert handle.adapter == ADAPTERS[kind]
            same_masks, same_boxes = predict(sam, imgsz, **prompt)
        assert torch.equal(same_masks, masks) and torch.equal(same_boxes, boxes)
        with tomeplug.patch(model, "pitome", r=0.5, scope=scope):
            merged_masks, merged_boxes = predict(sam, imgsz, **prompt)
        assert merged_masks.shape == masks.shape and torch.isfinite(merged_boxes).all()
        assert not torch.equal(merged_boxes[:, 4], boxes[:, 4])  # the predicted mask quality changed
        restored_masks, restored_boxes = predict(sam, imgsz, **prompt)
        assert torch.equal(restored_masks, masks) and torch.equal(restored_boxes, boxes)


def test_each_model_matches_exactly_its_adapter(registry, models):
    sam, sam2, sam3 = (models[kind][0] for kind in ("sam", "sam2", "sam3"))
    expected = [
        (sam, "ultralytics_sam_vit"),
        (sam.image_encoder, "ultralytics_sam_vit"),
        (sam2, "ultralytics_sam2_hiera"),
        (sam2.image_encoder, "ultralytics_sam2_hiera"),
        (sam2.image_encoder.trunk, "ultralytics_sam2_hiera"),
        (sam3, "ultralytics_sam3_vit"),
        (sam3.image_encoder, "ultralytics_sam3_vit"),
        (research.tiny_sam_encoder(), "sam_vit"),
        (research.tiny_hiera(), "sam2_hiera"),
        (research.tiny_sam3_vit(), "sam3_vit"),
    ]
    for model, adapter in expected:
        matched = [name for name, e in registry.adapters.items() if e.obj.target == "encoder" and e.obj.matches(model)]
        assert matched == [adapter], type(model).__name__


def test_mobile_sam_is_refused_by_name():
    """MobileSAM's ``SAMModel`` has a TinyViT encoder, no architecture of these adapters."""
    from ultralytics.models.sam.build import build_mobile_sam

    with pytest.raises(TypeError, match="no adapter supports ultralytics.models.sam.modules.sam.SAMModel"):
        tomeplug.patch(build_mobile_sam(), "tome", r=0.5)


def test_span_on_a_compiled_vit_is_refused():
    vit = ultra.tiny_sam3_vit()
    vit.forward = lambda x: x  # what compile_mode leaves: a forward in the instance's dict
    with pytest.raises(ValueError, match="compile_mode"):
        tomeplug.patch(vit, "tome", r=0.5, scope="span")


def test_rope_rows_move_to_the_tokens_device():
    """Ultralytics keeps ``freqs_cis`` as a plain attribute (it stays on the CPU when the model moves): the
    merged tokens' rows are gathered on the tokens' device, as upstream moves the table."""
    from tomeplug_adapters.sam3_vit_attention import kept_rotations

    freqs = ultra.tiny_sam3_vit().blocks[0].attn.freqs_cis
    kept = torch.zeros(2, 3, dtype=torch.long, device="meta")
    assert kept_rotations(freqs, kept).device.type == "meta"


def test_ultralytics_stays_offline_with_private_settings():
    import ultralytics.utils

    assert not ultralytics.utils.ONLINE
    assert Path(tempfile.gettempdir()) in ultralytics.utils.SETTINGS_FILE.parents

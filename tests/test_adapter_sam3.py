"""SAM 3 (sam3) ViT: exactness per scope, RoPE at the kept cells, merged token counts, bf16, compile, predictor.

Models are sam3's own classes at random weights and tiny sizes (``tiny_models.tiny_sam3_vit``: windowed
blocks on padded 4x4 windows with a run of two, two global blocks, LayerScale, RoPE, one block with
relative positions; ``tiny_sam3_image``: the whole image model from sam3's builder).
"""

from __future__ import annotations

import pytest
import torch
from scope_helpers import IdentityConfig, module_layout
from tiny_models import tiny_sam3_image, tiny_sam3_vit

import tomeplug

pytest.importorskip("sam3")

from sam3.model.vitdet import apply_rotary_enc  # noqa: E402

from tomeplug_adapters.sam3_vit_attention import rope_at_kept  # noqa: E402

SCOPES = ["attn", "block", "span"]
WINDOWED, GLOBAL = [0, 1, 3], [2, 4]  # tiny_sam3_vit's blocks


def encode(vit, x):
    with torch.no_grad():
        return vit(x)  # [(B, C, H, W)]


@pytest.fixture
def image():
    return torch.randn(2, 3, 140, 140, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("scope", SCOPES)
def test_r0_and_unpatch_are_bit_exact(scope, image):
    vit = tiny_sam3_vit()
    reference, layout = encode(vit, image), module_layout(vit)
    with tomeplug.patch(vit, "tome", r=0.0, scope=scope):
        assert torch.equal(encode(vit, image)[0], reference[0])
    with tomeplug.patch(vit, "tome", r=0.5, scope=scope):
        merged = encode(vit, image)[0]
        assert torch.isfinite(merged).all() and not torch.allclose(merged, reference[0])
    assert module_layout(vit) == layout
    assert torch.equal(encode(vit, image)[0], reference[0])


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("prop_attn", [False, True])
def test_identity_plan_reproduces_upstream(scope, prop_attn, image):
    """The merged path (windows, padding, RoPE, relative positions, LayerScale, runs) is upstream's."""
    vit = tiny_sam3_vit()
    reference = encode(vit, image)
    tomeplug.patch(vit, IdentityConfig(r=0.5), scope=scope, prop_attn=prop_attn)
    torch.testing.assert_close(encode(vit, image)[0], reference[0], atol=1e-5, rtol=1e-5)


def rotate_one(x, angles):
    """A reference rotation of one (hd,) vector by (hd / 2,) angles, channel pairs (2i, 2i + 1)."""
    out = torch.empty_like(x)
    for i, theta in enumerate(angles):
        a, b = x[2 * i], x[2 * i + 1]
        out[2 * i], out[2 * i + 1] = a * theta.cos() - b * theta.sin(), a * theta.sin() + b * theta.cos()
    return out


@pytest.mark.parametrize("block", [0, 2])  # a window's table and the global grid's
def test_rope_at_kept_rotates_each_token_by_its_kept_cell(block):
    freqs = tiny_sam3_vit().blocks[block].attn.freqs_cis  # (N, hd / 2) complex
    generator = torch.Generator().manual_seed(0)
    n, m = freqs.shape[0], freqs.shape[0] // 2
    kept = torch.stack([torch.randperm(n, generator=generator)[:m] for _ in range(3)])  # (B', M)
    q, k = torch.randn(2, 3, 2, m, 16, generator=generator)  # (B', heads, M, hd)
    q_rot, k_rot = rope_at_kept(q, k, freqs, kept)
    for b in range(3):
        for j in range(m):
            angles = freqs[kept[b, j]].angle()
            for h in range(2):
                torch.testing.assert_close(q_rot[b, h, j], rotate_one(q[b, h, j], angles), atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(k_rot[b, h, j], rotate_one(k[b, h, j], angles), atol=1e-5, rtol=1e-5)
    everyone = torch.arange(n).expand(3, n)  # all tokens kept in order: upstream's rotation, bit for bit
    q, k = torch.randn(2, 3, 2, n, 16, generator=generator)
    ours, upstream = rope_at_kept(q, k, freqs, everyone), apply_rotary_enc(q, k, freqs)
    assert torch.equal(ours[0], upstream[0]) and torch.equal(ours[1], upstream[1])


@pytest.mark.parametrize("scope", SCOPES)
def test_attention_sees_the_merged_token_count(scope, image):
    vit, r = tiny_sam3_vit(), 0.5
    seen = {}
    for index, block in enumerate(vit.blocks):
        block.attn.proj.register_forward_hook(lambda mod, args, out, i=index: seen.__setitem__(i, args[0].shape))
    tomeplug.patch(vit, "tome", r=r, scope=scope)
    encode(vit, image)
    windows = 2 * 3 * 3  # batch x the 3x3 windows of the 10x10 grid padded to 12x12
    for index in WINDOWED:
        assert seen[index][:2] == (windows, 16 - 8), index  # (B', M): 16 cells merged to 8
    for index in GLOBAL:
        assert seen[index][:2] == (2, 100 - 50), index


@pytest.mark.parametrize("scope", SCOPES)
def test_bf16_autocast(scope, image):
    vit = tiny_sam3_vit()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        upstream = encode(vit, image)[0]
    attn_dtypes = []
    vit.blocks[0].attn.proj.register_forward_hook(lambda mod, args, out: attn_dtypes.append(args[0].dtype))
    tomeplug.patch(vit, "tome", r=0.5, scope=scope)
    merged = encode(vit, image)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = encode(vit, image)[0]
    assert attn_dtypes[-1] == torch.bfloat16  # the merged attention ran in bf16
    assert low.dtype == upstream.dtype and torch.isfinite(low).all()
    assert torch.nn.functional.cosine_similarity(low.float().flatten(), merged.flatten(), dim=0) > 0.98


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("scope", SCOPES)
def test_fullgraph_compile_matches_eager(scope, backend, image):
    """One graph, merged RoPE's complex products included; inductor (code generated for the CPU) takes 40-100 s
    per scope with a cold compile cache on a shared 2-core machine, so it is a slow test."""
    vit = tiny_sam3_vit()
    tomeplug.patch(vit, "tome", r=0.5, scope=scope)
    expected = encode(vit, image)[0]
    compiled = torch.compile(vit, fullgraph=True, backend=backend, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(image)[0], expected, atol=1e-4, rtol=1e-4)


def test_span_on_a_vit_built_with_compile_mode_is_refused():
    vit = tiny_sam3_vit()
    vit.forward = torch.compile(vit.forward, fullgraph=True)  # what ViT(compile_mode=...) does
    with pytest.raises(ValueError, match="compile_mode"):
        tomeplug.patch(vit, "tome", r=0.5, scope="span")
    assert tomeplug.patch(vit, "tome", r=0.5, scope="block").adapter == "sam3_vit"


def test_merged_positions_need_the_built_image_size():
    vit = tiny_sam3_vit()
    tomeplug.patch(vit, "tome", r=0.5, scope="block")
    with pytest.raises(ValueError, match="img_size"):
        encode(vit, torch.randn(1, 3, 168, 168))  # a 12x12 grid: the global blocks' table has 10x10 rows


@pytest.fixture
def no_pinning(monkeypatch):
    """sam3 pins a small tensor in its box encoding, which fails without an accelerator: a no-op here."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: self)


def test_image_predictor_end_to_end_on_a_patched_model(no_pinning):
    """sam3's builder and Sam3Processor: box and text prompts on a span-patched model return masks."""
    from sam3.model.sam3_image_processor import Sam3Processor

    model = tiny_sam3_image()
    processor = Sam3Processor(model, resolution=140, device="cpu", confidence_threshold=-1.0)  # keep every query
    picture = torch.rand(3, 150, 120, generator=torch.Generator().manual_seed(2))
    reference = processor.set_image(picture)["backbone_out"]["vision_features"]

    handle = tomeplug.patch(model, "tome", r=0.5, scope="span")
    assert handle.adapter == "sam3_vit" and type(model.backbone.vision_backbone.trunk).__name__.startswith("Merging")
    state = processor.set_image(picture)
    assert not torch.allclose(state["backbone_out"]["vision_features"], reference)
    state = processor.add_geometric_prompt([0.5, 0.5, 0.4, 0.3], True, state)  # (cx, cy, w, h), normalised
    masks, boxes = state["masks"], state["boxes"]
    assert masks.shape[1:] == (1, 150, 120) and masks.shape[0] == boxes.shape[0] > 0 and masks.dtype == torch.bool
    assert torch.isfinite(state["masks_logits"]).all()
    state = processor.set_text_prompt("a cat", state)
    assert state["masks"].shape[1:] == (1, 150, 120) and state["masks"].shape[0] > 0

    handle.remove()
    assert torch.equal(processor.set_image(picture)["backbone_out"]["vision_features"], reference)


def test_identity_plan_through_the_image_model_matches_upstream():
    model = tiny_sam3_image()
    image = torch.randn(1, 3, 140, 140, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model.backbone.forward_image(image)["vision_features"]
        tomeplug.patch(model, IdentityConfig(r=0.5), scope="span")
        torch.testing.assert_close(
            model.backbone.forward_image(image)["vision_features"], reference, atol=1e-5, rtol=1e-5
        )


def test_point_and_box_prompts_through_predict_inst_on_a_patched_model():
    """SAM 3's SAM 1 task (``predict_inst``: point and box prompts) on the patched ViT's features."""
    import numpy as np
    from sam3.model.sam3_image_processor import Sam3Processor

    model = tiny_sam3_image(inst_interactive=True)
    processor = Sam3Processor(model, resolution=140, device="cpu")
    picture = torch.rand(3, 150, 120, generator=torch.Generator().manual_seed(2))
    prompts = dict(point_coords=np.array([[60, 70]]), point_labels=np.array([1]), multimask_output=True)

    def predict():
        return model.predict_inst(processor.set_image(picture), **prompts)

    _, _, reference = predict()
    with tomeplug.patch(model, "tome", r=0.0, scope="span"):
        assert np.array_equal(predict()[2], reference)
    with tomeplug.patch(model, "tome", r=0.5, scope="span"):
        masks, scores, logits = predict()
        assert masks.shape == (3, 150, 120) and scores.shape == (3,) and np.isfinite(logits).all()
        assert not np.allclose(logits, reference)
        box_masks, _, _ = model.predict_inst(
            processor.set_image(picture), box=np.array([10, 10, 100, 120]), multimask_output=False
        )
        assert box_masks.shape == (1, 150, 120)


@pytest.mark.parametrize("scope", SCOPES)
def test_check_adapter_on_the_whole_image_model(scope):
    """The conformance kit on the SAM 3 image model built by sam3's own builder (the ViT found inside it)."""
    from tomeplug.testing import check_adapter

    image = torch.randn(1, 3, 140, 140, generator=torch.Generator().manual_seed(4))
    check_adapter(
        "sam3_vit",
        tiny_sam3_image,
        lambda: image,
        run=lambda model, x: model.backbone.forward_image(x)["backbone_fpn"],
        scope=scope,
    )

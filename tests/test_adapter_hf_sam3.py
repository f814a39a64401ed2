"""transformers' SAM 3 (hf_sam3_vit): exactness per scope and attention, the same merged output as sam3's own ViT
with the same weights, RoPE at the kept cells, Sam3Model and Sam3TrackerModel end to end with their processors.

Models are transformers' own classes built from their configs at tiny sizes with random weights
(``tiny_hf_sam3``: 140 px, a 10x10 grid, 4x4 windows padded to 12x12, windowed runs (0, 1) and (3,),
global layers 2 and 4).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scope_helpers import IdentityConfig, module_layout

import tomeplug

pytest.importorskip("transformers")

from tiny_hf_sam3 import (  # noqa: E402
    tiny_clip_tokenizer,
    tiny_hf_sam3,
    tiny_hf_sam3_tracker,
    tiny_hf_sam3_tracker_video,
    tiny_hf_sam3_video,
    tiny_hf_sam3_vit,
)

from tomeplug.testing import check_adapter  # noqa: E402
from tomeplug_adapters.hf_sam3_vit import hf_sam3_vit, rope_table  # noqa: E402
from tomeplug_adapters.sam3_vit_attention import apply_rotations, kept_rotations  # noqa: E402

SCOPES = ["attn", "block", "span"]
IMPLEMENTATIONS = ["eager", "sdpa"]
WINDOWED, GLOBAL = [0, 1, 3], [2, 4]


def encode(vit, x, **kwargs):
    with torch.no_grad():
        return vit(x, **kwargs).last_hidden_state  # (B, H * W, C)


@pytest.fixture
def image():
    return torch.randn(2, 3, 140, 140, generator=torch.Generator().manual_seed(1))


def test_matches_the_vit_and_every_sam3_model_holding_one(registry):
    from torch import nn

    sam3 = tiny_hf_sam3()
    models = [tiny_hf_sam3_vit(), sam3, sam3.vision_encoder, tiny_hf_sam3_tracker(), tiny_hf_sam3_tracker_video()]
    video = tiny_hf_sam3_video()  # the detector's ViT (its tracker has none)
    for model in [*models, video]:
        assert registry.adapter_for(model).name == "hf_sam3_vit", type(model).__name__
    assert hf_sam3_vit(video) is video.detector_model.vision_encoder.backbone
    adapter = registry.adapters["hf_sam3_vit"].obj
    assert not adapter.matches(nn.Linear(2, 2)) and not adapter.matches(nn.Sequential(tiny_hf_sam3()))
    subclassed = tiny_hf_sam3_tracker()
    subclassed.__class__ = type("MyTracker", (type(subclassed),), {"__module__": __name__})
    assert hf_sam3_vit(subclassed) is subclassed.vision_encoder.backbone
    model = tiny_hf_sam3()
    model.second_vit = tiny_hf_sam3_vit()
    assert not adapter.matches(model)
    with pytest.raises(ValueError, match="holds 2 Sam3ViTModels"):
        hf_sam3_vit(model)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_conformance_kit_on_the_vit(implementation, image):
    """r = 0 and unpatch bit for bit, merging changes the output, in every scope, with eager and sdpa attention."""
    check_adapter("hf_sam3_vit", lambda: tiny_hf_sam3_vit(implementation), lambda: image)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("scope", SCOPES)
def test_conformance_kit_on_the_whole_sam3_model(implementation, scope):
    x = torch.randn(1, 3, 140, 140, generator=torch.Generator().manual_seed(4))
    run = lambda model, x: model.vision_encoder(x).fpn_hidden_states  # noqa: E731
    check_adapter("hf_sam3_vit", lambda: tiny_hf_sam3(implementation), lambda: x, run=run, scope=scope)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("prop_attn", [False, True])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_identity_plan_reproduces_upstream(scope, prop_attn, implementation, image):
    """The merged path (windows, padding, RoPE from position_ids, layer norms, runs) is upstream's."""
    vit = tiny_hf_sam3_vit(implementation)
    reference, layout = encode(vit, image), module_layout(vit)
    with tomeplug.patch(vit, IdentityConfig(r=0.5), scope=scope, prop_attn=prop_attn):
        torch.testing.assert_close(encode(vit, image), reference, atol=1e-5, rtol=1e-5)
    assert module_layout(vit) == layout and torch.equal(encode(vit, image), reference)


def sam3_twin():
    """sam3's own ViT and transformers' Sam3ViTModel with the same weights (q, k, v split from sam3's fused qkv).

    sam3's tiny ViT without relative positions and LayerScale (transformers' has neither), its layer norm eps."""
    from tiny_models import tiny_sam3_vit

    ours = tiny_sam3_vit(rel_pos_blocks=(), init_values=None)
    theirs = tiny_hf_sam3_vit(layer_norm_eps=ours.ln_pre.eps)
    sd = ours.state_dict()
    weights = {
        "embeddings.position_embeddings": sd["pos_embed"][:, 1:],  # sam3 keeps a class-token slot, unused here
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "layer_norm.weight": sd["ln_pre.weight"],
        "layer_norm.bias": sd["ln_pre.bias"],
    }
    names = {"norm1": "layer_norm1", "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    names["attn.proj"] = "attention.o_proj"
    for i in range(len(ours.blocks)):
        for kind in ("weight", "bias"):
            for old, new in names.items():
                weights[f"layers.{i}.{new}.{kind}"] = sd[f"blocks.{i}.{old}.{kind}"]
            for part, tensor in zip("qkv", sd[f"blocks.{i}.attn.qkv.{kind}"].chunk(3), strict=True):
                weights[f"layers.{i}.attention.{part}_proj.{kind}"] = tensor
    theirs.load_state_dict(weights, strict=True)
    return ours, theirs


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("metric", ["input", "keys"])
def test_same_weights_in_sam3_give_the_same_merged_output(scope, metric, image):
    """The independent reference: sam3's ViT patched by sam3_vit. Dense outputs agree (so RoPE layouts match),
    then merged ones at r = 0.5 (proportional attention on): the mapping of names and RoPE is right."""
    pytest.importorskip("sam3")
    ours, theirs = sam3_twin()

    def both():
        with torch.no_grad():
            return ours(image)[0].flatten(2).transpose(1, 2), theirs(image).last_hidden_state  # (B, H * W, C)

    dense = both()
    torch.testing.assert_close(dense[1], dense[0], atol=2e-5, rtol=1e-5)
    options = dict(r=0.5, scope=scope, metric=metric, prop_attn=True)
    with tomeplug.patch(ours, "tome", **options) as one, tomeplug.patch(theirs, "tome", **options) as other:
        assert (one.adapter, other.adapter) == ("sam3_vit", "hf_sam3_vit")
        merged = both()
    assert (merged[0] - dense[0]).abs().amax() > 0.1  # it merged
    torch.testing.assert_close(merged[1], merged[0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", [0, 2])  # a window's table and the global grid's
def test_rope_at_kept_cells_is_upstreams_rotation_of_those_cells(layer):
    """transformers' (cos, sin) read as a complex table rotate as transformers does, at each token's kept cell."""
    from transformers.models.sam3.modeling_sam3 import apply_rotary_pos_emb_2d

    block = tiny_hf_sam3_vit().layers[layer]
    cos, sin = block.rotary_emb(block.position_ids, block.position_ids)  # (1, N, hd)
    n, generator = cos.shape[1], torch.Generator().manual_seed(0)
    kept = torch.stack([torch.randperm(n, generator=generator)[: n // 2] for _ in range(3)])  # (B', M)
    q, k = torch.randn(2, 3, 4, n // 2, 16, generator=generator)  # (B', heads, M, hd)
    q_rot, k_rot = apply_rotations(q, k, kept_rotations(rope_table((cos, sin), n), kept))
    for b in range(3):
        q_ref, k_ref = apply_rotary_pos_emb_2d(q[b], k[b], cos[0, kept[b]], sin[0, kept[b]])
        torch.testing.assert_close(q_rot[b], q_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(k_rot[b], k_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scope", SCOPES)
def test_attention_sees_the_merged_token_count(scope, image):
    vit = tiny_hf_sam3_vit()
    seen = {}
    for index, layer in enumerate(vit.layers):
        layer.attention.o_proj.register_forward_hook(lambda m, args, out, i=index: seen.__setitem__(i, args[0].shape))
    tomeplug.patch(vit, "tome", r=0.5, scope=scope)
    encode(vit, image)
    for index in WINDOWED:
        assert seen[index][:2] == (2 * 3 * 3, 8), index  # batch x 3x3 windows, 16 cells merged to 8
    for index in GLOBAL:
        assert seen[index][:2] == (2, 50), index


@pytest.mark.parametrize("scope", SCOPES)
def test_bf16_autocast(scope, image):
    vit = tiny_hf_sam3_vit()
    tomeplug.patch(vit, "tome", r=0.5, scope=scope)
    dtypes = []
    vit.layers[0].attention.o_proj.register_forward_hook(lambda m, args, out: dtypes.append(args[0].dtype))
    merged = encode(vit, image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = encode(vit, image)
    assert dtypes[-1] == torch.bfloat16 and torch.isfinite(low).all()
    assert torch.nn.functional.cosine_similarity(low.float().flatten(), merged.flatten(), dim=0) > 0.98


def test_fullgraph_compile_of_the_span_loop_matches_eager(image):
    """The swapped ViT loop, its output capture, the layers on merged tokens and the RoPE gathers compile whole."""
    vit = tiny_hf_sam3_vit()
    tomeplug.patch(vit, "tome", r=0.5, scope="span")
    expected = encode(vit, image)
    compiled = torch.compile(vit, fullgraph=True, backend="aot_eager", dynamic=False)
    torch.testing.assert_close(encode(compiled, image), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scope", ["attn", "block"])
def test_hidden_states_in_attn_and_block_scope(scope, image):
    vit = tiny_hf_sam3_vit("eager")
    with torch.no_grad():
        dense = vit(image, output_hidden_states=True)
        tomeplug.patch(vit, "tome", r=0.5, scope=scope)
        merged = vit(image, output_hidden_states=True)
    assert len(dense.hidden_states) == 6  # the embeddings and every layer's output
    assert [h.shape for h in merged.hidden_states] == [h.shape for h in dense.hidden_states]
    torch.testing.assert_close(merged.hidden_states[-1], merged.last_hidden_state.view(2, 10, 10, -1))
    assert not torch.allclose(merged.hidden_states[1], dense.hidden_states[1])  # layer 0's output, merged


@pytest.mark.parametrize("scope", SCOPES)
def test_outputs_merged_layers_do_not_have_are_refused(scope, image):
    """Merged layers have no dense attention weights; a span's inner layers no hidden states of their own."""
    vit = tiny_hf_sam3_vit("eager")
    assert len(vit(image, output_attentions=True).attentions) == 5  # eager upstream records them
    tomeplug.patch(vit, "tome", r=0.5, scope=scope)
    with pytest.raises(ValueError, match="output_attentions"):
        vit(image, output_attentions=True)
    if scope == "span":
        with pytest.raises(ValueError, match=r"output_hidden_states.*scope='block'"):
            vit(image, output_hidden_states=True)
        vit.config.output_hidden_states = True  # the config's flag is read too
        with pytest.raises(ValueError, match="output_hidden_states"):
            vit(image)
        vit.config.output_hidden_states = False
    assert encode(vit, image).shape == (2, 100, 64)


def test_merged_positions_need_the_built_image_size():
    vit = tiny_hf_sam3_vit()
    tomeplug.patch(vit, "tome", r=0.5, scope="block")
    with pytest.raises(ValueError, match="image_size"):
        encode(vit, torch.randn(1, 3, 168, 168))  # a 12x12 grid: the global layers' table has 10x10 rows


def test_attention_dropout_in_training_is_refused(image):
    vit = tiny_hf_sam3_vit(attention_dropout=0.1).train()
    tomeplug.patch(vit, "tome", r=0.5, scope="attn")
    with pytest.raises(ValueError, match="attention_dropout"):
        vit(image)


@pytest.fixture
def eager_roi_align(monkeypatch):
    """Without torchvision's compiled ops, its roi_align (SAM 3's box encoding) torch.compiles a Python version on
    first use (~12 s here): run that version eagerly instead (same result)."""
    import torchvision.ops  # noqa: F401

    module = sys.modules["torchvision.ops.roi_align"]
    monkeypatch.setattr(module, "_roi_align", getattr(module._roi_align, "__wrapped__", module._roi_align))


@pytest.fixture
def picture():
    return (np.random.default_rng(0).random((150, 120, 3)) * 255).astype(np.uint8)


def segment_with_prompts(model, processor, picture, prompts, scope, postprocess):
    """Each prompt through the processor and the model: r = 0 gives upstream's masks bit for bit; r = 0.5 masks of
    the same shape, finite and different, which ``postprocess(outputs, inputs)`` turns into image-sized masks;
    unpatching restores upstream's."""
    for name, prompt in prompts.items():
        inputs = processor(images=picture, return_tensors="pt", **prompt)
        with torch.no_grad():
            reference = model(**inputs).pred_masks
            with tomeplug.patch(model, "tome", r=0.0, scope=scope):
                assert torch.equal(model(**inputs).pred_masks, reference), name
            with tomeplug.patch(model, "tome", r=0.5, scope=scope) as handle:
                assert handle.adapter == "hf_sam3_vit"
                merged = model(**inputs)
            assert merged.pred_masks.shape == reference.shape and torch.isfinite(merged.pred_masks).all(), name
            assert not torch.allclose(merged.pred_masks, reference), name
            postprocess(merged, inputs)
            assert torch.equal(model(**inputs).pred_masks, reference), name


def test_sam3_model_end_to_end_with_its_processor(eager_roi_align, picture):
    """Sam3Processor (its image processor and a CLIP tokenizer built offline) and Sam3Model's forward: box and
    text prompts on a span-patched model give instance masks."""
    from transformers import Sam3ImageProcessor, Sam3Processor

    processor = Sam3Processor(Sam3ImageProcessor(size={"height": 140, "width": 140}), tiny_clip_tokenizer())

    def instances(outputs, inputs):
        sizes = inputs["original_sizes"].tolist()
        found = processor.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=sizes)[0]
        assert found["masks"].shape[1:] == (150, 120) and found["masks"].shape[0] == found["boxes"].shape[0] > 0

    prompts = {"box": dict(input_boxes=[[[10, 20, 90, 110]]], input_boxes_labels=[[1]]), "text": dict(text="a cat")}
    segment_with_prompts(tiny_hf_sam3(), processor, picture, prompts, "span", instances)


def test_sam3_tracker_end_to_end_with_its_processor(picture):
    """Sam3TrackerProcessor and Sam3TrackerModel (SAM 1 style point and box prompts) on a block-patched model."""
    from transformers import Sam3ImageProcessor, Sam3TrackerProcessor

    processor = Sam3TrackerProcessor(Sam3ImageProcessor(size={"height": 140, "width": 140}))

    def masks(outputs, inputs):
        found = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])[0]
        assert found.shape == (1, 3, 150, 120) and found.dtype == torch.bool

    prompts = {
        "points": dict(input_points=[[[[60, 70], [30, 40]]]], input_labels=[[[1, 0]]]),
        "box": dict(input_boxes=[[[10, 20, 90, 110]]]),
    }
    segment_with_prompts(tiny_hf_sam3_tracker(), processor, picture, prompts, "block", masks)


def test_sam3_tracker_video_propagates_a_point_prompt_on_a_patched_model(picture):
    """Sam3TrackerVideoProcessor's video session and Sam3TrackerVideoModel: a point on frame 0 propagated through
    three frames, span-patched: masks for every frame, as upstream's at r = 0 and after unpatching."""
    from transformers import Sam2VideoVideoProcessor, Sam3ImageProcessor, Sam3TrackerVideoProcessor

    model = tiny_hf_sam3_tracker_video()
    size = {"height": 140, "width": 140}
    processor = Sam3TrackerVideoProcessor(Sam3ImageProcessor(size=size), Sam2VideoVideoProcessor(size=size))
    video = (np.random.default_rng(1).random((3, 150, 120, 3)) * 255).astype(np.uint8)

    def track():
        session = processor.init_video_session(video=video, inference_device="cpu")
        processor.add_inputs_to_inference_session(
            inference_session=session, frame_idx=0, obj_ids=1, input_points=[[[[60, 70]]]], input_labels=[[[1]]]
        )
        with torch.no_grad():
            model(inference_session=session, frame_idx=0)
            return torch.stack([out.pred_masks for out in model.propagate_in_video_iterator(session)])

    reference = track()
    assert reference.shape[0] == 3
    with tomeplug.patch(model, "tome", r=0.0, scope="span"):
        assert torch.equal(track(), reference)
    with tomeplug.patch(model, "tome", r=0.5, scope="span"):
        merged = track()
    assert merged.shape == reference.shape and torch.isfinite(merged).all() and not torch.allclose(merged, reference)
    masks = processor.post_process_masks([merged[-1]], original_sizes=[[150, 120]])[0]
    assert masks.shape[-2:] == (150, 120) and masks.dtype == torch.bool
    assert torch.equal(track(), reference)

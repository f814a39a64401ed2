"""Merge scopes on SAM ViT and HQ-SAM ViT: ``block`` (attention and MLP merged) and ``span`` (runs of blocks)."""

from __future__ import annotations

import pickle
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from scope_helpers import IdentityConfig, encode, module_layout, record_mlp_inputs
from tiny_models import deep_encoder, tiny_hiera, tiny_sam_encoder

import tomeplug

PACKAGES = ["segment_anything", "segment_anything_hq"]
SCOPES = ["block", "span"]
WINDOWED, GLOBAL = [0, 1, 3, 4], [2, 5]  # blocks of tiny_models.deep_encoder()


def cosine(a, b):
    return F.cosine_similarity(a.flatten(1), b.flatten(1)).min().item()


@pytest.fixture
def image():
    return torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("scope", SCOPES)
def test_r0_is_bit_exact(package, scope, strategy_name, image):
    encoder = deep_encoder(package)
    reference = encode(encoder, image)
    tomeplug.patch(encoder, strategy_name, r=0.0, scope=scope)
    assert torch.equal(encode(encoder, image), reference)


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("prop_attn", [False, True])
def test_identity_plan_reproduces_upstream(package, scope, prop_attn, image):
    """The merged path itself (windows, padding, delta unmerge, spans, neck) is upstream's when nothing merges."""
    encoder = deep_encoder(package)
    reference = encode(encoder, image)
    tomeplug.patch(encoder, IdentityConfig(r=0.5), scope=scope, prop_attn=prop_attn)
    torch.testing.assert_close(encode(encoder, image), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("scope", SCOPES)
def test_unpatch_is_bit_exact(package, scope, image):
    encoder = deep_encoder(package)
    reference = encode(encoder, image)
    layout = module_layout(encoder)
    handle = tomeplug.patch(encoder, "tome", r=0.5, scope=scope)
    assert not torch.allclose(encode(encoder, image), reference)
    handle.remove()
    assert module_layout(encoder) == layout
    assert torch.equal(encode(encoder, image), reference)


@pytest.mark.parametrize("scope", SCOPES)
def test_merging_changes_output_and_stays_finite(scope, strategy_name, image):
    encoder = deep_encoder()
    reference = encode(encoder, image)
    tomeplug.patch(encoder, strategy_name, r=0.25, scope=scope)
    out = encode(encoder, image)
    assert torch.isfinite(out).all() and not torch.allclose(out, reference)


def test_block_scope_mlp_sees_merged_tokens(image):
    encoder = deep_encoder()
    r, seen = 0.4, record_mlp_inputs(encoder.blocks)
    tomeplug.patch(encoder, "tome", r=r, scope="block")
    encode(encoder, image)
    for index in WINDOWED:  # 16 windows of 5 x 5 (the 16 x 16 grid padded to 20 x 20) per image
        assert seen[index] == (2 * 16, 25 - int(25 * r), 64), index
    for index in GLOBAL:
        assert seen[index] == (2, 256 - int(256 * r), 64), index


def count_plans(monkeypatch, config_class):
    """Record the metric shape of every plan() call of ``config_class``."""
    calls = []
    original = config_class.plan

    def plan(self, metric, grid, valid=None):
        calls.append(tuple(metric.shape))
        return original(self, metric, grid, valid)

    monkeypatch.setattr(config_class, "plan", plan)
    return calls


@pytest.mark.parametrize(
    "model, scope, plans",
    [("sam", "attn", 6), ("sam", "block", 6), ("sam", "span", 4), ("hiera", "attn", 12), ("hiera", "block", 12)]
    + [("hiera", "span", 9)],  # runs: SAM (0, 1), (2,), (3, 4), (5,); Hiera tiny_models.tiny_hiera's docstring
)
def test_one_plan_per_attention_call_or_span(monkeypatch, registry, model, scope, plans):
    calls = count_plans(monkeypatch, registry.strategy("tome"))
    sam = model == "sam"
    encoder, side, first = (deep_encoder(), 256, (2 * 16, 25, 16)) if sam else (tiny_hiera(), 128, (2 * 16, 64, 16))
    tomeplug.patch(encoder, "tome", r=0.3, scope=scope)
    encode(encoder, torch.randn(2, 3, side, side))
    assert len(calls) == plans
    assert calls[0] == first  # all windows of the batch in one call; metric = heads' mean


def test_span_unmerges_before_global_blocks_and_the_neck(image):
    encoder = deep_encoder()
    tomeplug.patch(encoder, "tome", layers=WINDOWED, r=0.5, scope="span")
    assert encoder.tomeplug_runs == ((0, 1), (2,), (3, 4), (5,))
    inputs, outputs = {}, {}

    def record(module, args, out, index):
        inputs[index], outputs[index] = args[0], out

    for index in GLOBAL:
        encoder.blocks[index].register_forward_hook(partial(record, index=index))
    encoder.neck.register_forward_pre_hook(lambda m, args: inputs.update(neck=args[0]))
    encode(encoder, image)
    for index in GLOBAL:  # the whole unmerged grid goes through the unpatched global block
        assert inputs[index].shape == (2, 16, 16, 64)
        assert type(encoder.blocks[index]).__name__ == "Block"
    assert inputs["neck"].shape == (2, 64, 16, 16)
    assert torch.equal(outputs[5].permute(0, 3, 1, 2), inputs["neck"])


@pytest.mark.parametrize("layers", [[0, 1], [2]])
def test_span_of_one_block_is_block_scope(layers, image):
    """A span-scoped block alone in its run (next to another scope, or a global block) is block-scoped."""
    encoder = deep_encoder()
    block = {"strategy": "tome", "r": 0.4, "scope": "block"}
    tomeplug.patch(encoder, layers=dict.fromkeys(layers, block))
    expected = encode(encoder, image)
    tomeplug.patch(encoder, layers={**dict.fromkeys(layers[:-1], block), layers[-1]: block | {"scope": "span"}})
    assert all(len(run) == 1 for run in encoder.tomeplug_runs)
    assert torch.equal(encode(encoder, image), expected)


def test_mixed_scopes_on_consecutive_windowed_blocks(monkeypatch, registry, image):
    calls = count_plans(monkeypatch, registry.strategy("tome"))
    encoder = deep_encoder()
    span = {"strategy": "tome", "scope": "span", "r": 0.4}
    layers = {0: span, 1: span | {"r": 0.2}, 2: span, 3: {"strategy": "tome", "scope": "attn"}, 4: span}
    reference = encode(encoder, image)
    tomeplug.patch(encoder, layers=layers)
    assert encoder.tomeplug_runs == ((0,), (1,), (2,), (3,), (4,), (5,))  # configs differ: no shared run
    assert type(encoder.blocks[3]).__name__ == "Block" and type(encoder.blocks[3].attn).__name__ != "Attention"
    out = encode(encoder, image)
    assert len(calls) == 5 and torch.isfinite(out).all() and not torch.equal(out, reference)
    calls.clear()
    tomeplug.patch(encoder, layers={0: span, 1: span, 3: span, 4: span | {"scope": "block"}})
    assert encoder.tomeplug_runs == ((0, 1), (2,), (3,), (4,), (5,))
    encode(encoder, image)
    assert len(calls) == 3


def test_fidelity_decreases_with_scope(image):
    encoder = deep_encoder()
    reference = encode(encoder, image)
    fidelity = {}
    for scope in ("attn", "block", "span"):
        tomeplug.patch(encoder, "tome", r=0.5, scope=scope)
        fidelity[scope] = cosine(encode(encoder, image), reference)
    assert all(value > 0.95 for value in fidelity.values()), fidelity  # seeds 0-2: 0.9998 / 0.993 / 0.993
    assert fidelity["attn"] >= fidelity["block"] - 1e-3 >= fidelity["span"] - 2e-3, fidelity  # roughly ordered


@pytest.mark.parametrize("scope", SCOPES)
def test_hq_sam_intermediate_embeddings(scope, image):
    encoder = deep_encoder("segment_anything_hq")
    with torch.no_grad():
        _, dense = encoder(image)
        tomeplug.patch(encoder, "tome", r=0.5, scope=scope)
        out, interm = encoder(image)
    assert out.shape == (2, 32, 16, 16)
    assert [t.shape for t in interm] == [t.shape for t in dense] == [(2, 16, 16, 64)] * 2


def test_patched_sam_and_pickle(image):
    sam_encoder = tiny_sam_encoder()  # depth 4: windowed blocks never adjacent, the encoder is swapped all the same
    tomeplug.patch(sam_encoder, "tome", r=0.5, scope="span")
    assert sam_encoder.tomeplug_runs == ((0,), (1,), (2,), (3,))
    encoder = deep_encoder()
    tomeplug.patch(encoder, "tome", r=0.5, scope="span")
    expected = encode(encoder, image)
    clone = pickle.loads(pickle.dumps(encoder))
    assert torch.equal(encode(clone, image), expected)
    assert tomeplug.unpatch(clone) and type(clone).__name__ == "ImageEncoderViT"


def test_an_adapter_failing_half_way_leaves_the_earlier_patch_exactly(image):
    from tomeplug_adapters.sam_vit import SamViTAdapter

    class Failing(SamViTAdapter):
        name = "failing"

        def patch_block(self, model, index, schedule):
            if index == 3:
                raise RuntimeError("boom")
            super().patch_block(model, index, schedule)

    encoder = deep_encoder()
    earlier = tomeplug.patch(encoder, "tome", layers=[1, 4], r=0.3)
    expected, layout = encode(encoder, image), module_layout(encoder)
    with pytest.raises(RuntimeError, match="boom"):
        tomeplug.patch(encoder, "pitome", scope="span", adapter=Failing())  # blocks 0-2 patched, then it fails
    assert module_layout(encoder) == layout and tomeplug.active_patch(encoder) is earlier
    assert torch.equal(encode(encoder, image), expected)
    earlier.remove()
    assert tomeplug.active_patch(encoder) is None and type(encoder.blocks[1].attn).__name__ == "Attention"

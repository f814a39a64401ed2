"""Merge scopes ``block`` and ``span`` on SAM 2 Hiera: exactness, merged MLPs, runs within stages, predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scope_helpers import IdentityConfig, module_layout, record_mlp_inputs
from tiny_models import sam2_feat_sizes, tiny_hiera, tiny_sam2

import tomeplug

SCOPES = ["block", "span"]
WINDOWED, Q_POOL = [0, 1, 3, 4, 6, 7, 9, 11], [2, 5, 10]  # tiny_hiera's blocks (8 is global)
RUNS = ((0, 1), (2,), (3, 4), (5,), (6, 7), (8,), (9,), (10,), (11,))


def encode(trunk, x):
    with torch.no_grad():
        return trunk(x)  # every stage's output, (B, C, H, W)


def assert_outputs_close(outputs, reference, exact=False):
    assert [o.shape for o in outputs] == [r.shape for r in reference]
    for out, ref in zip(outputs, reference, strict=True):
        if exact:
            assert torch.equal(out, ref)
        else:
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.fixture
def image():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("scope", SCOPES)
def test_r0_is_bit_exact(scope, strategy_name, image):
    trunk = tiny_hiera()
    reference = encode(trunk, image)
    tomeplug.patch(trunk, strategy_name, r=0.0, scope=scope)
    assert_outputs_close(encode(trunk, image), reference, exact=True)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("prop_attn", [False, True])
def test_identity_plan_reproduces_upstream(scope, prop_attn, image):
    """The merged path itself (windows, padding, delta unmerge, runs, stage outputs) is upstream's."""
    trunk = tiny_hiera()
    reference = encode(trunk, image)
    tomeplug.patch(trunk, IdentityConfig(r=0.5), scope=scope, prop_attn=prop_attn)
    assert_outputs_close(encode(trunk, image), reference)


@pytest.mark.parametrize("scope", SCOPES)
def test_unpatch_is_bit_exact(scope, image):
    trunk = tiny_hiera()
    reference = encode(trunk, image)
    layout = module_layout(trunk)
    handle = tomeplug.patch(trunk, "tome", r=0.5, scope=scope)
    assert not torch.allclose(encode(trunk, image)[-1], reference[-1])
    handle.remove()
    assert module_layout(trunk) == layout
    assert_outputs_close(encode(trunk, image), reference, exact=True)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("options", [{}, {"prop_attn": True, "exclude_padding": True}, {"metric": "keys"}])
def test_merging_changes_output_and_stays_finite(scope, strategy_name, options, image):
    trunk = tiny_hiera()
    reference = encode(trunk, image)
    tomeplug.patch(trunk, strategy_name, r=0.25, scope=scope, **options)
    outputs = encode(trunk, image)
    assert all(torch.isfinite(out).all() for out in outputs)
    assert not torch.allclose(outputs[-1], reference[-1])


def test_block_scope_mlp_sees_merged_tokens_and_stage_transitions_merge_in_attention(image):
    trunk = tiny_hiera()
    r, seen = 0.4, record_mlp_inputs(trunk.blocks)
    tomeplug.patch(trunk, "tome", r=r, scope="block")
    encode(trunk, image)
    windows = {0: (16, 64, 16), 1: (16, 64, 16), 3: (16, 16, 32), 4: (16, 16, 32), 6: (4, 36, 64), 7: (4, 36, 64)}
    windows |= {9: (4, 36, 64), 11: (4, 9, 128), 8: (1, 64, 64)}  # 8: global over the 8x8 map
    for index, (count, n, c) in windows.items():
        assert seen[index] == (2 * count, n - int(n * r), c), index
    for index, grid, c in [(2, 16, 32), (5, 8, 64), (10, 4, 128)]:  # pooled outputs: every token
        assert seen[index] == (2, grid, grid, c), index
        block = trunk.blocks[index]
        assert type(block).__name__ == "MultiScaleBlock" and type(block.attn).__name__ != "MultiScaleAttention"


def test_span_runs_break_at_global_blocks_and_stage_transitions():
    trunk = tiny_hiera()
    tomeplug.patch(trunk, "tome", r=0.3, scope="span")
    assert trunk.tomeplug_runs == RUNS


def test_span_runs_end_at_stage_ends(image):
    """Without q-pooling or channel changes, a stage's first block could join the previous run; it must
    not, as the trunk returns every stage's output."""
    trunk = tiny_hiera(stages=(2, 2), window_spec=(4, 4), global_att_blocks=(), q_pool=0, dim_mul=1.0, head_mul=1.0)
    reference = encode(trunk, image)
    tomeplug.patch(trunk, IdentityConfig(r=0.5), scope="span")
    assert trunk.tomeplug_runs == ((0, 1), (2, 3))
    assert_outputs_close(encode(trunk, image), reference)
    tomeplug.patch(trunk, "tome", r=0.5, scope="span")
    assert trunk.tomeplug_runs == ((0, 1), (2, 3))
    assert [o.shape for o in encode(trunk, image)] == [(2, 16, 32, 32)] * 2


def test_mixed_scopes_break_runs(image):
    trunk = tiny_hiera()
    span = {"strategy": "tome", "scope": "span", "r": 0.4}
    layers = {0: span, 1: span | {"r": 0.3}, 3: span, 4: span, 6: span | {"scope": "block"}, 7: span}
    tomeplug.patch(trunk, layers=layers)
    assert trunk.tomeplug_runs == ((0,), (1,), (2,), (3, 4), (5,), (6,), (7,), (8,), (9,), (10,), (11,))
    outputs = encode(trunk, image)
    assert all(torch.isfinite(out).all() for out in outputs)


def test_bf16_autocast(image):
    trunk = tiny_hiera()
    tomeplug.patch(trunk, "tome", r=0.5, scope="span", prop_attn=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = trunk(image)
    assert [o.shape[1:] for o in outputs] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]
    assert all(torch.isfinite(out).all() for out in outputs)


@pytest.mark.parametrize("scope", SCOPES)
def test_image_predictor_end_to_end(scope):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = tiny_sam2()
    predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = sam2_feat_sizes(model.image_size)
    image = np.random.default_rng(0).integers(0, 256, (90, 110, 3), dtype=np.uint8)
    box = np.array([10, 20, 80, 70])
    predictor.set_image(image)
    _, _, dense = predictor.predict(box=box, multimask_output=False)
    tomeplug.patch(model, "tome", r=0.5, scope=scope)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(box=box, multimask_output=False)
    assert masks.shape == (1, 90, 110) and scores.shape == (1,) and np.isfinite(logits).all()
    assert not np.allclose(logits, dense)

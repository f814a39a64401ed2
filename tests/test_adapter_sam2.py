"""The SAM 2 Hiera adapter on tiny official models: exactness at r=0, real merging, predictors end to end."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import sam2_feat_sizes, tiny_sam2

import tomeplug
from tomeplug.metric import padding_mask, plan_merge
from tomeplug.plan import MergePlan
from tomeplug_adapters.sam2_hiera import MergingMultiScaleAttention, merged_attention

# block index of each kind of attention call in tiny_sam2's trunk (grids 32/16/8/4 at image size 128)
BLOCKS = {
    "windowed": 0,  # 8x8 windows over a 32x32 grid
    "windowed_padded": 4,  # 6x6 windows over an 8x8 grid
    "windowed_odd": 7,  # 3x3 windows over a 4x4 grid
    "global": 5,  # the whole 8x8 map
    "q_pool": 1,  # stage transition: 8x8 windows, q pooled to 4x4
    "q_pool_padded": 6,  # stage transition on padded 6x6 windows, q pooled to 3x3
}
VIDEO = "sam2.sam2_video_predictor.SAM2VideoPredictor"


@pytest.fixture(scope="module")
def base_model():
    return tiny_sam2()


@pytest.fixture
def model(base_model):
    return copy.deepcopy(base_model)


@pytest.fixture(scope="module")
def attn_inputs(base_model):
    """The input of every block's attention on one random image: {block: (B', h, w, C)}."""
    inputs = {}
    blocks = base_model.image_encoder.trunk.blocks
    hooks = [b.attn.register_forward_pre_hook(lambda m, a, i=i: inputs.update({i: a[0]})) for i, b in enumerate(blocks)]
    with torch.no_grad():
        base_model.image_encoder(torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)))
    for hook in hooks:
        hook.remove()
    return inputs


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every scaled_dot_product_attention call (upstream's and ours): (queries, keys, mask dtype ok)."""
    calls, sdpa = [], F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape[-2], k.shape[-2], attn_mask is None or attn_mask.dtype == q.dtype))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    return calls


def test_tiny_model_has_every_kind_of_block(base_model):
    blocks = base_model.image_encoder.trunk.blocks
    for kind, i in BLOCKS.items():
        assert (blocks[i].window_size == 0) == (kind == "global")
        assert (blocks[i].attn.q_pool is not None) == kind.startswith("q_pool")
        assert blocks[i].attn.num_heads >= 2


@pytest.mark.parametrize("kind", BLOCKS)
def test_r0_falls_back_bit_exact(model, attn_inputs, kind):
    attn, x = model.image_encoder.trunk.blocks[BLOCKS[kind]].attn, attn_inputs[BLOCKS[kind]]
    with torch.no_grad():
        expected = attn(x)
        tomeplug.patch(model, "tome", layers=[BLOCKS[kind]], r=0.0)
        assert isinstance(attn, MergingMultiScaleAttention)
        assert torch.equal(attn(x), expected)


@pytest.mark.parametrize("prop_attn", [False, True])
@pytest.mark.parametrize("kind", BLOCKS)
def test_merging_path_with_identity_plan_matches_upstream(model, attn_inputs, kind, prop_attn):
    attn, x = model.image_encoder.trunk.blocks[BLOCKS[kind]].attn, attn_inputs[BLOCKS[kind]]
    plan = MergePlan.identity(x.shape[0], x.shape[1] * x.shape[2])
    with torch.no_grad():
        expected, got = attn(x), merged_attention(attn, x, plan, prop_attn)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", BLOCKS)
def test_merging_path_matches_a_reference_on_merged_tokens(model, attn_inputs, kind):
    """Heads and channels are laid out as upstream's (B, N, 3, heads, hd) qkv: checked on a real merge."""
    attn, x = model.image_encoder.trunk.blocks[BLOCKS[kind]].attn, attn_inputs[BLOCKS[kind]]
    b, h, w, c = x.shape
    config = tomeplug.get_registry().strategy("tome")(r=0.5)
    tokens = x.reshape(b, h * w, c)
    plan = config.plan(tokens, (h, w))
    with torch.no_grad():
        got = merged_attention(attn, x, plan, prop_attn=False)
        if attn.q_pool is None:  # upstream attention over the merged tokens laid out as a 1 x M grid, unmerged
            merged = plan.merge(tokens)
            expected = plan.unmerge(attn(merged.reshape(b, 1, -1, c)).reshape(b, plan.num_merged, -1))
            expected = expected.reshape(b, h, w, -1)
        else:  # upstream's q, pooled; upstream's k and v per token, merged
            q, k, v = attn.qkv(tokens).reshape(b, h * w, 3, attn.num_heads, -1).unbind(2)
            q = attn.q_pool(q.reshape(b, h, w, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            hq, wq = q.shape[1:3]
            k, v = (plan.merge(t.flatten(2)).reshape(b, plan.num_merged, attn.num_heads, -1) for t in (k, v))
            q = q.reshape(b, hq * wq, attn.num_heads, -1)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            expected = attn.proj(out.transpose(1, 2).reshape(b, hq, wq, -1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", BLOCKS)
def test_merging_changes_output_and_attends_over_fewer_tokens(model, attn_inputs, kind, strategy_name, sdpa_calls):
    attn, x = model.image_encoder.trunk.blocks[BLOCKS[kind]].attn, attn_inputs[BLOCKS[kind]]
    n, qkv_tokens = x.shape[1] * x.shape[2], []
    attn.qkv.register_forward_hook(lambda m, a, out: qkv_tokens.append(a[0].shape[1]))
    r = min(0.5, tomeplug.get_registry().strategy(strategy_name).max_r)
    with torch.no_grad():
        expected = attn(x)
        handle = tomeplug.patch(model, strategy_name, layers=[BLOCKS[kind]], r=r)
        kept = n - handle.schedule[BLOCKS[kind]].num_to_merge(n)
        sdpa_calls.clear()
        qkv_tokens.clear()
        got = attn(x)
        tomeplug.patch(model, strategy_name, layers=[BLOCKS[kind]], r=r, prop_attn=True)
        got_prop = attn(x)
    assert got.shape == expected.shape and torch.isfinite(got).all() and torch.isfinite(got_prop).all()
    assert not torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, got_prop, atol=1e-6)
    queries = n // 4 if kind.startswith("q_pool") else kept  # q-pooling blocks merge keys and values only
    assert sdpa_calls == [(queries, kept, True)] * 2
    assert qkv_tokens == ([] if kind.startswith("q_pool") else [kept, kept])


def test_patch_unpatch_bit_exact_on_the_image_encoder(model):
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    encoder = model.image_encoder
    with torch.no_grad():
        before = encoder(image)["vision_features"]
        with tomeplug.patch(model, "tome", r=0.0):
            assert torch.equal(encoder(image)["vision_features"], before)
        state = encoder.state_dict()
        with tomeplug.patch(encoder, "tome", r=0.5):
            merged = encoder(image)["vision_features"]
            assert list(encoder.state_dict()) == list(state)  # same keys, same tensors
            assert all(torch.equal(t, state[k]) for k, t in encoder.state_dict().items())
            restored = pickle.loads(pickle.dumps(encoder))(image)["vision_features"]
        assert torch.equal(encoder(image)["vision_features"], before)
    assert merged.shape == before.shape and not torch.allclose(merged, before, atol=1e-4)
    assert torch.equal(restored, merged)


@pytest.mark.parametrize("kind", ["windowed_padded", "q_pool_padded", "windowed_odd"])
def test_exclude_padding_finds_hiera_padding(model, attn_inputs, kind):
    """Hiera pads normed tokens with exact zeros: the shared padding mask finds exactly the padding."""
    attn, x = model.image_encoder.trunk.blocks[BLOCKS[kind]].attn, attn_inputs[BLOCKS[kind]]
    tokens = x.reshape(x.shape[0], -1, x.shape[-1])
    grid = 4 if kind == "windowed_odd" else 8  # the block's unpadded map, in a batch of 2 images
    assert padding_mask(tokens).sum() == 2 * grid * grid < tokens.shape[0] * tokens.shape[1]
    setting = tomeplug.Setting(strategy=tomeplug.get_registry().strategy("tome")(r=0.5), exclude_padding=True)
    plan = plan_merge(setting, tokens, attn.qkv, attn.num_heads, x.shape[1:3])
    padded = torch.zeros(plan.kept.shape).scatter_add_(1, plan.assignment, (~padding_mask(tokens)).float())
    assert not ((padded > 0) & (padded < plan.size)).any()  # no slot holds both padding and real tokens
    with torch.no_grad():
        tomeplug.patch(model, setting, layers=[BLOCKS[kind]])
        assert torch.isfinite(attn(x)).all()


@pytest.mark.parametrize("metric", ["input", "keys"])
def test_metric_option_on_every_block(model, metric):
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = model.image_encoder(image)["vision_features"]
        with tomeplug.patch(model, "tome", r=0.5, metric=metric):
            merged = model.image_encoder(image)["vision_features"]
    assert torch.isfinite(merged).all() and not torch.allclose(merged, reference, atol=1e-4)


def test_bf16_autocast_with_proportional_attention(model, sdpa_calls):
    """Under autocast q is bf16 while the attention input stays fp32: the mask follows q's dtype."""
    tomeplug.patch(model, "tome", r=0.5, prop_attn=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.image_encoder(torch.randn(1, 3, 128, 128))["vision_features"]
    assert out.shape == (1, 32, 8, 8) and torch.isfinite(out).all()
    assert len(sdpa_calls) == 8 and all(ok for _, _, ok in sdpa_calls)


@pytest.mark.parametrize("which", ["model", "video", "encoder", "trunk"])
def test_adapter_matches_by_class_name(base_model, which):
    target = tiny_sam2(target=VIDEO) if which == "video" else base_model
    target = {"encoder": target.image_encoder, "trunk": target.image_encoder.trunk}.get(which, target)
    adapter = tomeplug.get_registry().adapter_for(target)
    assert adapter.name == "sam2_hiera"
    assert len(adapter.blocks(target)) == 8
    assert not adapter.matches(base_model.image_encoder.neck)


@pytest.mark.parametrize(("layers", "error"), [([], ValueError), ([8], IndexError), ([-1], IndexError)])
def test_bad_schedule_raises_and_states_the_depth(model, layers, error):
    with pytest.raises(error, match="0..7"):
        tomeplug.patch(model, "tome", layers=layers, r=0.5)
    assert tomeplug.unpatch(model) is False


def test_image_predictor_end_to_end(model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    tomeplug.patch(model, "tome", r=0.5)
    seen = []  # tokens per window in block 0's qkv: 64 before merging
    model.image_encoder.trunk.blocks[0].attn.qkv.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = sam2_feat_sizes(model.image_size)
    image = np.random.default_rng(0).integers(0, 256, (90, 110, 3), dtype=np.uint8)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(box=np.array([10, 20, 80, 70]), multimask_output=False)
    assert masks.shape == (1, 90, 110) and scores.shape == (1,) and np.isfinite(logits).all()
    assert seen == [32]


def test_video_predictor_end_to_end(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(tmp_path / f"{i:05d}.jpg")
    predictor = tiny_sam2(target=VIDEO)
    tomeplug.patch(predictor, "tome", r=0.5)
    seen = []
    predictor.image_encoder.trunk.blocks[0].attn.qkv.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    state = predictor.init_state(str(tmp_path))
    mask = np.zeros((72, 96), dtype=bool)
    mask[20:50, 30:70] = True
    predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=mask)
    frames = {i: logits for i, _, logits in predictor.propagate_in_video(state)}
    assert sorted(frames) == [0, 1, 2]
    assert seen and set(seen) == {32}
    assert all(f.shape == (1, 1, 72, 96) and torch.isfinite(f).all() for f in frames.values())

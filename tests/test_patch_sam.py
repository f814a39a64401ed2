"""The reversible patch on SAM ViT (and HQ-SAM ViT), for every registered strategy."""

from __future__ import annotations

import pickle

import attrs
import numpy as np
import pytest
import torch
from reference_attention import sam_attention
from tiny_models import tiny_sam, tiny_sam_encoder

import tomeplug
from tomeplug.plan import MergePlan
from tomeplug_adapters.sam_vit import merged_attention

PACKAGES = ["segment_anything", "segment_anything_hq"]


def encode(encoder, x):
    with torch.no_grad():
        out = encoder(x)
    return out[0] if isinstance(out, tuple) else out  # HQ-SAM also returns intermediate embeddings


@pytest.fixture
def image():
    return torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("package", PACKAGES)
def test_r0_reproduces_unpatched_bit_for_bit(package, strategy_name, image):
    encoder = tiny_sam_encoder(package)
    reference = encode(encoder, image)
    tomeplug.patch(encoder, strategy_name, r=0.0)
    assert torch.equal(encode(encoder, image), reference)


@pytest.mark.parametrize("package", PACKAGES)
def test_unpatch_restores_bit_for_bit(package, strategy_name, image):
    encoder = tiny_sam_encoder(package)
    reference = encode(encoder, image)
    classes = [type(m) for m in encoder.modules()]
    handle = tomeplug.patch(encoder, strategy_name, r=0.3)
    assert not torch.allclose(encode(encoder, image), reference)
    handle.remove()
    assert [type(m) for m in encoder.modules()] == classes
    assert torch.equal(encode(encoder, image), reference)
    assert tomeplug.active_patch(encoder) is None


def test_context_manager_unpatches(image):
    encoder = tiny_sam_encoder()
    reference = encode(encoder, image)
    with tomeplug.patch(encoder, "tome", layers=[0, 1], r=0.4) as handle:
        assert tomeplug.active_patch(encoder) is handle
        assert not torch.equal(encode(encoder, image), reference)
    assert torch.equal(encode(encoder, image), reference)


def test_patching_twice_equals_patching_once(strategy_name, image):
    encoder = tiny_sam_encoder()
    tomeplug.patch(encoder, strategy_name, layers=[0, 1], r=0.3)
    once = encode(encoder, image)
    tomeplug.patch(encoder, strategy_name, layers=[0, 1], r=0.3)
    assert torch.equal(encode(encoder, image), once)
    tomeplug.patch(encoder, strategy_name, layers=[2], r=0.2)  # a new patch replaces the old one
    assert sorted(tomeplug.active_patch(encoder).schedule) == [2]
    assert encoder.blocks[0].attn.__class__.__name__ == "Attention"


def test_state_dict_unchanged(strategy_name):
    encoder = tiny_sam_encoder()
    before = encoder.state_dict()
    tomeplug.patch(encoder, strategy_name, r=0.5)
    after = encoder.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    clone = tiny_sam_encoder(seed=5)
    tomeplug.patch(clone, strategy_name, r=0.5)
    clone.load_state_dict(before)  # a patched model loads official weights unchanged


def test_attention_sees_merged_token_count(strategy_name, image):
    encoder = tiny_sam_encoder()
    r = 0.3
    seen = {}
    for index, block in enumerate(encoder.blocks):
        block.attn.qkv.register_forward_hook(lambda m, args, out, i=index: seen.__setitem__(i, args[0].shape))
    tomeplug.patch(encoder, strategy_name, r=r)
    encode(encoder, image)
    for index, block in enumerate(encoder.blocks):
        n = 16 * 16 if block.window_size == 0 else block.window_size**2
        assert seen[index][1] == n - int(n * r), f"block {index}"


def test_mixed_schedule_per_block(image):
    encoder = tiny_sam_encoder()
    config = tomeplug.get_registry().strategy("tome")(r=0.1)
    handle = tomeplug.patch(encoder, layers={0: "tome", 2: config, 3: {"strategy": "tome", "r": 0.2}}, r=0.4)
    rs = {i: s.strategy.r for i, s in handle.schedule.items()}
    assert rs == {0: 0.4, 2: 0.4, 3: 0.4}  # params override every entry
    handle = tomeplug.patch(encoder, layers={0: "tome", 2: config, 3: {"strategy": "tome", "r": 0.2}})
    assert {i: s.strategy.r for i, s in handle.schedule.items()} == {0: 0.5, 2: 0.1, 3: 0.2}
    assert encoder.blocks[2].attn.tomeplug_setting.strategy.r == 0.1
    assert type(encoder.blocks[1].attn).__name__ == "Attention"
    assert torch.isfinite(encode(encoder, image)).all()
    options = {"scope": "attn", "metric": "input", "prop_attn": False, "exclude_padding": False, "memory_r": None}
    assert handle.to_dict()["layers"][2] == {"strategy": "tome", **attrs.asdict(config), **options}


@pytest.mark.parametrize("prop_attn", [False, True])
@pytest.mark.parametrize("block_index", [0, 1])  # a windowed (padded) and a global block
def test_merging_path_with_identity_plan_matches_upstream(block_index, prop_attn):
    attn = tiny_sam_encoder().blocks[block_index].attn
    side = 5 if block_index == 0 else 16
    x = torch.randn(3, side, side, 64)
    plan = MergePlan.identity(3, side * side)
    with torch.no_grad():
        ours = merged_attention(attn, x.reshape(3, side * side, 64), plan, (side, side), prop_attn)
        upstream = attn(x)
    torch.testing.assert_close(ours.reshape_as(upstream), upstream, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prop_attn", [False, True])
@pytest.mark.parametrize("block_index", [0, 1])  # a windowed (padded) and a global block
def test_merged_attention_matches_a_per_call_reference(block_index, prop_attn):
    """With a real plan, merged tokens attend at their kept tokens' cells: every call on its own, in full."""
    attn = tiny_sam_encoder().blocks[block_index].attn.double()
    side = 5 if block_index == 0 else 16
    tokens = torch.randn(3, side * side, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    plan = tomeplug.get_registry().strategy("tome")(r=0.5).plan(tokens[..., :16], (side, side))
    with torch.no_grad():
        got = merged_attention(attn, tokens, plan, (side, side), prop_attn)
        merged = plan.merge(tokens)
        calls = [sam_attention(attn, merged[i], plan.kept[i], plan.size[i], (side, side), prop_attn) for i in range(3)]
    torch.testing.assert_close(got, plan.unmerge(torch.stack(calls)), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("package", PACKAGES)
def test_predictor_end_to_end_on_patched_model(package):
    predictor_module = __import__(package, fromlist=["SamPredictor"])
    sam = tiny_sam(package)
    image = np.random.default_rng(0).integers(0, 255, (180, 240, 3), dtype=np.uint8)
    box = np.array([30, 40, 150, 120])
    predictor = predictor_module.SamPredictor(sam)

    def predict():
        predictor.set_image(image)
        return predictor.predict(box=box, multimask_output=False)

    dense_masks, dense_scores, _ = predict()
    tomeplug.patch(sam, "tome", r=0.5)
    masks, scores, logits = predict()
    assert masks.shape == dense_masks.shape == (1, 180, 240)
    assert np.isfinite(logits).all() and np.isfinite(scores).all()
    tomeplug.unpatch(sam)
    masks_again, scores_again, _ = predict()
    np.testing.assert_array_equal(masks_again, dense_masks)
    np.testing.assert_array_equal(scores_again, dense_scores)


def test_patched_model_pickles(image, tmp_path):
    encoder = tiny_sam_encoder()
    tomeplug.patch(encoder, "tome", layers=[0, 3], r=0.3)
    expected = encode(encoder, image)
    clone = pickle.loads(pickle.dumps(encoder))
    assert torch.equal(encode(clone, image), expected)
    assert tomeplug.unpatch(clone) and type(clone.blocks[0].attn).__name__ == "Attention"


def test_patched_model_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    encoder = tiny_sam_encoder()
    tomeplug.patch(encoder, "tome", layers=[1], r=0.3)
    torch.save(encoder, tmp_path / "model.pt")
    code = (
        "import torch; from tomeplug.torchvision_compat import ensure_torchvision; ensure_torchvision(); "
        f"m = torch.load(r'{tmp_path / 'model.pt'}', weights_only=False); "
        "print(type(m.blocks[1].attn).__mro__[2].__name__, m.blocks[1].attn.tomeplug_setting.strategy.r)"
    )
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["Attention", "0.3"]


def test_unpatch_removes_every_attached_attribute():
    encoder = tiny_sam_encoder()
    before = [sorted(m.__dict__) for m in encoder.modules()]
    tomeplug.patch(encoder, "tome", r=0.3)
    encoder.blocks[0].attn.tomeplug_extra_state = 1  # adapters may attach their own tomeplug_* state
    tomeplug.unpatch(encoder)
    assert [sorted(m.__dict__) for m in encoder.modules()] == before


@pytest.mark.parametrize("hq_token_only", [False, True])
def test_hq_predictor_reads_patched_intermediate_embeddings(hq_token_only):
    from segment_anything_hq import SamPredictor

    sam = tiny_sam("segment_anything_hq")
    image = np.random.default_rng(1).integers(0, 255, (200, 160, 3), dtype=np.uint8)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    dense_interm = [t.clone() for t in predictor.interm_features]
    dense = predictor.predict(box=np.array([20, 30, 140, 170]), multimask_output=False, hq_token_only=hq_token_only)
    tomeplug.patch(sam, "tome", layers=[0, 1], r=0.5)
    predictor.set_image(image)
    assert len(predictor.interm_features) == len(dense_interm) == 2  # one per global block, as the HQ decoder reads
    assert not torch.equal(predictor.interm_features[0], dense_interm[0])  # they come from the merged encoder
    masks, scores, logits = predictor.predict(
        box=np.array([20, 30, 140, 170]), multimask_output=False, hq_token_only=hq_token_only
    )
    assert masks.shape == dense[0].shape == (1, 200, 160) and np.isfinite(logits).all()

"""timm ViT and timm SAM ViT adapters on tiny randomised official models."""

from __future__ import annotations

import copy
import inspect
import pickle

import attrs
import pytest
import torch
from tiny_models import _randomise, tiny_samvit, tiny_vit
from torch import Tensor, nn

import tomeplug
from tomeplug.config import StrategyConfig
from tomeplug.plan import MergePlan
from tomeplug_adapters.timm_samvit import merged_samvit_attention
from tomeplug_adapters.timm_vit import TokenLayout, merged_vit_attention

PREFIX, GRID, WINDOW = 3, (8, 8), 3  # of tiny_vit / tiny_samvit: class + 2 register tokens; 8x8 grid; 3x3 windows


MODELS = {"vit": tiny_vit, "samvit": tiny_samvit, "samvit_rope": lambda: tiny_samvit(rope=True)}


@pytest.fixture(params=sorted(MODELS))
def model(request) -> nn.Module:
    return MODELS[request.param]()


@pytest.fixture
def image() -> Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def max_r(registry, name: str) -> float:
    return min(0.5, registry.strategy(name).max_r)


def set_fused(model: nn.Module, fused: bool) -> None:
    for block in model.blocks:
        block.attn.fused_attn = fused


@torch.no_grad()
def test_adapters_match_by_class_name(registry):
    from timm.models.deit import VisionTransformerDistilled

    deit = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    assert registry.adapter_for(tiny_vit()).name == "timm_vit"
    assert registry.adapter_for(deit).name == "timm_vit"  # a subclass, with class and distillation tokens
    assert registry.adapter_for(tiny_samvit()).name == "timm_samvit"
    with tomeplug.patch(deit, "tome", r=0.5):
        assert torch.isfinite(deit.forward_features(torch.randn(1, 3, 32, 32))).all()
    for name in ("timm_vit", "timm_samvit"):
        assert not registry.adapters[name].obj.matches(nn.Linear(2, 2))


@torch.no_grad()
def test_r0_is_bit_exact(model, image, strategy_name):
    reference = model.forward_features(image)
    with tomeplug.patch(model, strategy_name, r=0.0):
        assert torch.equal(model.forward_features(image), reference)


@torch.no_grad()
def test_merging_and_unpatch(model, image, strategy_name, registry):
    reference, state = model.forward_features(image), model.state_dict()
    with tomeplug.patch(model, strategy_name, r=max_r(registry, strategy_name), prop_attn=True):
        out = model.forward_features(image)
        assert list(model.state_dict()) == list(state)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.isfinite(out).all() and (out - reference).abs().amax() > 1e-3  # all tokens, not a pooled head
    assert torch.equal(model.forward_features(image), reference)


@torch.no_grad()
def test_merged_token_counts(model, image, strategy_name, registry):
    config = registry.strategy(strategy_name)(r=max_r(registry, strategy_name))
    assert config.num_to_merge(WINDOW * WINDOW) > 0  # every attention call sees fewer tokens
    seen = []
    for block in model.blocks:
        block.attn.qkv.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape[:2])))
    tomeplug.patch(model, config)
    model.forward_features(image)
    if "VisionTransformerSAM" in type(model).__name__:  # blocks 0, 2: 2 x 9 windows of 3x3; blocks 1, 3: global
        window, grid = WINDOW * WINDOW, GRID[0] * GRID[1]
        windowed, whole = (2 * 9, window - config.num_to_merge(window)), (2, grid - config.num_to_merge(grid))
        assert seen == [windowed, whole, windowed, whole]
    else:  # prefix tokens + the patch tokens left after merging
        assert seen == [(2, PREFIX + 64 - config.num_to_merge(64))] * 4


@torch.no_grad()
def test_fused_and_manual_attention_agree(model, image, strategy_name, registry):
    tomeplug.patch(model, strategy_name, r=max_r(registry, strategy_name), prop_attn=True)
    inputs = []
    for block in model.blocks:
        block.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    set_fused(model, True)
    assert torch.isfinite(model.forward_features(image)).all()
    for block, x in zip(model.blocks, list(inputs), strict=True):  # the same input (and plan) in both settings
        fused = block.attn(x)
        block.attn.fused_attn = False
        torch.testing.assert_close(block.attn(x), fused, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(model.forward_features(image)).all()


def timm_attentions() -> list[nn.Module]:
    """Upstream timm ViT attentions: the tiny ViT's (q/k norm) and one with output norm and gate."""
    from timm.layers import Attention

    options = dict(qk_norm=True, scale_norm=True, gated=True, norm_layer=nn.LayerNorm)
    options = {k: v for k, v in options.items() if k in inspect.signature(Attention).parameters}
    return [tiny_vit().blocks[0].attn, _randomise(Attention(64, num_heads=4, **options), 0)]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("prop_attn", [True, False])
@torch.no_grad()
def test_identity_plan_matches_upstream(fused, prop_attn):
    torch.manual_seed(0)
    for attn in timm_attentions():
        attn.fused_attn = fused
        x = torch.randn(2, PREFIX + 64, 64)
        out = merged_vit_attention(attn, x, MergePlan.identity(2, 64), PREFIX, prop_attn)
        torch.testing.assert_close(out, attn(x), atol=1e-5, rtol=0)
    for sam in (tiny_samvit(), tiny_samvit(rope=True)):
        for attn, side in ((sam.blocks[0].attn, WINDOW), (sam.blocks[1].attn, GRID[0])):  # windowed, global
            attn.fused_attn = fused
            x = torch.randn(5, side, side, 64)
            plan = MergePlan.identity(5, side * side)
            out = merged_samvit_attention(attn, x.reshape(5, -1, 64), plan, (side, side), prop_attn)
            torch.testing.assert_close(out.reshape(x.shape), attn(x), atol=1e-5, rtol=0)


@attrs.frozen(kw_only=True)
class MergeFirst(StrategyConfig):
    """Merges the first floor(r * N) + 1 tokens of each group into one: would swallow any prefix token."""

    name = "merge_first"

    def plan(self, metric: Tensor, grid: tuple[int, int]) -> MergePlan:
        b, n, _ = metric.shape
        assert n == grid[0] * grid[1] == 64  # the strategy sees the patch tokens only
        m = self.num_to_merge(n)
        slot = (torch.arange(n) - m).clamp(min=0)  # tokens 0..m -> slot 0
        kept = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(m + 1, n)])
        return MergePlan.from_assignment(slot.expand(b, n), kept.expand(b, n - m))


@torch.no_grad()
def test_prefix_tokens_are_never_merged(image):
    """Prefix tokens pass through; the output is upstream's attention over [prefix, merged patches], unmerged."""
    vit = tiny_vit()
    attn = vit.blocks[2].attn
    upstream = copy.deepcopy(attn)
    captured = {}
    attn.register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0]))
    attn.qkv.register_forward_hook(lambda _m, args, _o: captured.__setitem__("qkv", args[0]))
    attn.register_forward_hook(lambda _m, _a, out: captured.__setitem__("out", out))
    tomeplug.patch(vit, MergeFirst(r=0.25), layers=[2])
    vit.forward_features(image)
    x, qkv_in, out = captured["x"], captured["qkv"], captured["out"]
    assert qkv_in.shape[1] == PREFIX + 64 - 16
    assert torch.equal(qkv_in[:, :PREFIX], x[:, :PREFIX])  # prefix tokens enter attention untouched
    first_slot = x[:, PREFIX : PREFIX + 17].mean(dim=1, keepdim=True)  # patch tokens 0..16, merged
    torch.testing.assert_close(qkv_in[:, PREFIX : PREFIX + 1], first_slot)
    dense = upstream(torch.cat([x[:, :PREFIX], first_slot, x[:, PREFIX + 17 :]], dim=1))  # (B, PREFIX + 48, C)
    slot = dense[:, PREFIX : PREFIX + 1]  # every token of the first slot leaves with its output
    expected = torch.cat([dense[:, :PREFIX], slot.expand(-1, 17, -1), dense[:, PREFIX + 1 :]], dim=1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_patched_model_pickles(image):
    vit = tiny_vit()
    tomeplug.patch(vit, "tome", r=0.5)
    copy = pickle.loads(pickle.dumps(vit))
    assert torch.equal(copy.forward_features(image), vit.forward_features(image))


def test_grid_layout_and_dynamic_sizes():
    layout = TokenLayout(1, (4, 6))
    assert layout.grid_for(24) == (4, 6) and layout.grid_for(36) == (6, 6)
    with pytest.raises(ValueError, match="patch grid"):
        layout.grid_for(35)


@torch.no_grad()
def test_errors(registry):
    vit = tiny_vit()
    with pytest.raises(IndexError, match="4 blocks"):
        tomeplug.patch(vit, "tome", layers=[4], r=0.5)
    with pytest.raises(ValueError, match="selects no block"):
        tomeplug.patch(vit, "tome", layers=[], r=0.5)
    with pytest.raises(ValueError, match="out of range"):
        tomeplug.patch(vit, "tome", r=1.5)
    tomeplug.patch(vit, "tome", layers=[0], r=0.5)
    with pytest.raises(ValueError, match="attn_mask"):
        vit.blocks[0].attn(torch.randn(1, PREFIX + 64, 64), attn_mask=torch.zeros(PREFIX + 64, PREFIX + 64))
    with pytest.raises(TypeError, match="supports blocks whose attention"):
        tomeplug.patch(tiny_vit(attn_layer="diff"), "tome", r=0.5)
    with pytest.raises(TypeError, match="cannot handle"):
        registry.adapters["timm_vit"].obj.blocks(tiny_samvit())
    adapter, vit = registry.adapters["timm_vit"].obj, tiny_vit()
    adapter.patch_block(vit, 0, {0: tomeplug.Setting(strategy=registry.strategy("tome")(r=0.5))})  # no blocks() first
    assert vit.blocks[0].attn.tomeplug_layout.prefix == PREFIX and not vars(adapter)  # the adapter keeps no state

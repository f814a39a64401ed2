"""Strategy options shared by every strategy: metric choice, padding exclusion, proportional attention."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_sam_encoder
from torch import nn

import tomeplug
from tomeplug.metric import head_mean, key_features, padding_mask, plan_merge
from tomeplug.plan import MergePlan
from tomeplug_adapters.sam_vit import merged_attention


def config_for(name, **params):
    return tomeplug.get_registry().strategy(name)(**params)


def setting_for(name, r, **options):
    return tomeplug.Setting(strategy=config_for(name, r=r), **options)


def test_key_features_are_the_k_slice_of_qkv():
    attn = tiny_sam_encoder().blocks[0].attn
    tokens = torch.randn(3, 25, 64)
    qkv = attn.qkv(tokens).reshape(3, 25, 3, 64)
    torch.testing.assert_close(key_features(tokens, attn.qkv), qkv[:, :, 1])


@pytest.mark.parametrize("metric", ["input", "keys"])
def test_plan_uses_the_chosen_metric(strategy_name, metric):
    attn = tiny_sam_encoder().blocks[0].attn
    tokens = torch.randn(4, 25, 64, generator=torch.Generator().manual_seed(0))
    setting = setting_for(strategy_name, 0.4, metric=metric)
    features = tokens if metric == "input" else attn.qkv(tokens)[..., 64:128]  # qkv's rows: q, k, v
    expected = setting.strategy.plan(features.reshape(4, 25, 4, 16).mean(dim=2), (5, 5))  # mean over the 4 heads
    plan = plan_merge(setting, tokens, attn.qkv, 4, (5, 5))
    assert torch.equal(plan.assignment, expected.assignment) and torch.equal(plan.kept, expected.kept)


def test_metric_option_end_to_end():
    encoder = tiny_sam_encoder()
    x = torch.randn(1, 3, 256, 256)
    outputs = {}
    for metric in ("input", "keys"):
        tomeplug.patch(encoder, "tome", r=0.5, metric=metric)
        with torch.no_grad():
            outputs[metric] = encoder(x)
    assert not torch.equal(outputs["input"], outputs["keys"])
    with pytest.raises(ValueError, match="metric=.values. is not a metric tomeplug computes; choose one of input"):
        tomeplug.patch(encoder, "tome", metric="values")


def padded_windows(seed=0):
    """Four 5x5 windows whose last two columns and last row are zero padding (as SAM pads edge windows)."""
    tokens = torch.randn(4, 5, 5, 16, generator=torch.Generator().manual_seed(seed))
    tokens[:, :, 3:] = 0
    tokens[:, 4, :] = 0
    return tokens.reshape(4, 25, 16)


@pytest.mark.parametrize("r", [0.2, 0.5])
def test_exclude_padding_never_mixes_padding_and_real_tokens(strategy_name, r):
    setting = setting_for(strategy_name, r, exclude_padding=True)
    tokens = padded_windows()
    valid = padding_mask(tokens)
    assert valid.sum(1).tolist() == [12] * 4
    plan = plan_merge(setting, tokens, nn.Linear(16, 48), 2, (5, 5))  # the mask is found from the zero tokens
    slot_has_real = torch.zeros(plan.kept.shape, dtype=torch.long).scatter_add_(1, plan.assignment, valid.long())
    slot_has_pad = torch.zeros(plan.kept.shape, dtype=torch.long).scatter_add_(1, plan.assignment, (~valid).long())
    assert not ((slot_has_real > 0) & (slot_has_pad > 0)).any()
    merged = plan.merge(tokens)
    torch.testing.assert_close(plan.unmerge(merged)[~valid], torch.zeros_like(tokens[~valid]))


def test_without_exclusion_padding_does_mix():
    """The published behaviour (padding merged like real tokens) is what the option changes."""
    config = config_for("tome", r=0.5)
    tokens = padded_windows()
    valid = padding_mask(tokens)
    plan = config.plan(head_mean(tokens, 2), (5, 5))
    unmerged = plan.unmerge(plan.merge(tokens))
    assert unmerged[~valid].abs().sum() > 0  # padding took real content: mixed slots


def test_exclude_padding_end_to_end_on_padded_windows():
    encoder = tiny_sam_encoder()  # 16x16 grid in windows of 5: edge windows are zero-padded
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        tomeplug.patch(encoder, "tome", layers=[0], r=0.5)
        mixed = encoder(x)
        tomeplug.patch(encoder, "tome", layers=[0], r=0.5, exclude_padding=True)
        excluded = encoder(x)
    assert torch.isfinite(excluded).all() and not torch.equal(mixed, excluded)


def test_exclude_padding_needs_a_supporting_strategy():
    import attrs

    @attrs.frozen(kw_only=True)
    class Plain(tomeplug.StrategyConfig):
        name = "plain"

    with pytest.raises(ValueError, match="strategy 'plain' cannot exclude padding"):
        tomeplug.Setting(strategy=Plain(), exclude_padding=True)
    with pytest.raises(ValueError, match="strategy 'plain' cannot exclude padding"):
        tomeplug.patch(tiny_sam_encoder(), Plain(), exclude_padding=True)


def test_proportional_attention_makes_exact_duplicates_invisible():
    """Without positional terms, merging exact duplicates with +log(size) reproduces the dense attention."""
    from segment_anything.modeling.image_encoder import Attention

    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, use_rel_pos=False).eval()
    x = torch.randn(2, 4, 4, 32)
    x[:, 0, 1] = x[:, 0, 0]  # token 1 duplicates token 0
    x[:, 3, 3] = x[:, 2, 2]  # token 15 duplicates token 10
    assignment = torch.arange(16)
    assignment[1], assignment[15] = 0, 10
    slots = torch.unique(assignment, return_inverse=True)[1]
    kept = torch.tensor([0, *range(2, 15)])
    plan = MergePlan.from_assignment(slots.expand(2, 16), kept.expand(2, 14))
    with torch.no_grad():
        dense = attn(x).reshape(2, 16, 32)
        proportional = merged_attention(attn, x.reshape(2, 16, 32), plan, (4, 4), prop_attn=True)
        plain = merged_attention(attn, x.reshape(2, 16, 32), plan, (4, 4), prop_attn=False)
    torch.testing.assert_close(proportional, dense, atol=1e-5, rtol=1e-5)
    assert (plain - dense).abs().max() > 1e-3

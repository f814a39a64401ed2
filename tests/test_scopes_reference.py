"""Scopes ``block`` and ``span`` against a plain per-window reference, with real merges (SAM ViT, SAM 2 Hiera).

The reference is written from the semantics in ``tomeplug_adapters.windowed_scopes``' docstring, one image
and one window at a time, with the unpatched model's sub-layers (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp``), the plain attentions of ``reference_attention`` and ``MergePlan.merge`` / ``unmerge``;
it shares nothing else with the adapters. Each window gets its own plan from the strategy (so the batched
implementation's planning of all windows at once is checked too). In float64, the batched implementation
must give the reference's numbers.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import STRATEGIES
from reference_attention import hiera_attention, sam_attention
from scope_helpers import encode
from tiny_models import deep_encoder, tiny_hiera

import tomeplug

R = 0.5
SAM_RUNS = {"block": ((0,), (1,), (2,), (3,), (4,), (5,)), "span": ((0, 1), (2,), (3, 4), (5,))}
HIERA_MERGED = [0, 1, 3, 4, 6, 7, 8, 9, 11]  # every block but the q-pooling ones (2, 5, 10: attention scope only)
HIERA_RUNS = {
    "block": tuple((i,) for i in range(12)),
    "span": ((0, 1), (2,), (3, 4), (5,), (6, 7), (8,), (9,), (10,), (11,)),  # runs end at stage ends and pooling
}


def window_plan(strategy, first, tokens, real, grid, options):
    """The strategy's plan for one window: metric = its attention input (padding zeroed), or keys, head-averaged."""
    normed = first.norm1(tokens) * real  # (N, C)
    features = normed
    if options.get("metric") == "keys":
        features = first.attn.qkv(normed).chunk(3, dim=-1)[1]
    n, c = features.shape
    metric = features.reshape(n, first.attn.num_heads, c // first.attn.num_heads).mean(dim=1)  # (N, C / heads)
    if options.get("exclude_padding"):
        return strategy.plan(metric[None], grid, real.squeeze(-1).bool()[None])
    return strategy.plan(metric[None], grid)


def reference_window(blocks, attention, strategy, tokens, real, grid, options):
    """One window's residual tokens (N, C) through ``blocks`` on merged tokens, delta-unmerged: (N, C)."""
    plan = window_plan(strategy, blocks[0], tokens, real, grid, options)
    merged = plan.merge(tokens[None])[0]  # (M, C) size-weighted mean residuals
    real_slot = (plan.merge(real[None])[0] > 0).to(tokens.dtype)  # (M, 1) 0 for slots of padding only
    kept, size = plan.kept[0], plan.size[0]
    out = merged
    for block in blocks:
        out = out + attention(block.attn, block.norm1(out) * real_slot, kept, size, grid, options.get("prop_attn"))
        out = out + block.mlp(block.norm2(out))
    return tokens + plan.unmerge((out - merged)[None])[0]


def reference_run(blocks, attention, strategy, x, options):
    """A run of blocks (one window size) on merged tokens, window by window: (B, H, W, C) -> (B, H, W, C)."""
    b, h, w, c = x.shape
    size = blocks[0].window_size
    wh, ww = (size, size) if size else (h, w)
    ph, pw = -h % wh, -w % ww
    padded = F.pad(x, (0, 0, 0, pw, 0, ph))  # zeros at the bottom and right, as upstream pads windows
    real = F.pad(x.new_ones(b, h, w, 1), (0, 0, 0, pw, 0, ph))
    out = torch.empty_like(padded)
    for i in range(b):
        for top in range(0, h + ph, wh):
            for left in range(0, w + pw, ww):
                cell = (i, slice(top, top + wh), slice(left, left + ww))
                tokens, mask = padded[cell].reshape(wh * ww, c), real[cell].reshape(wh * ww, 1)
                result = reference_window(blocks, attention, strategy, tokens, mask, (wh, ww), options)
                out[cell] = result.reshape(wh, ww, c)
    return out[:, :h, :w]


def reference_blocks(blocks, runs, merged, attention, strategy, x, options):
    """Every block in ``runs``: merged runs by the reference, the others as upstream. {last block: run output}."""
    outputs = {}
    for run in runs:
        if run[0] in merged:
            x = reference_run([blocks[i] for i in run], attention, strategy, x, options)
        else:
            for i in run:
                x = blocks[i](x)
        outputs[run[-1]] = x
    return outputs


def reference_sam(encoder, runs, strategy, image, options):
    """The SAM ViT encoder's output, every block merged, by the reference."""
    x = encoder.patch_embed(image) + encoder.pos_embed
    merged = range(len(encoder.blocks))
    outputs = reference_blocks(encoder.blocks, runs, merged, sam_attention, strategy, x, options)
    return encoder.neck(outputs[len(encoder.blocks) - 1].permute(0, 3, 1, 2))


def reference_hiera(trunk, runs, strategy, image, options):
    """The Hiera trunk's stage outputs, ``HIERA_MERGED`` blocks merged, by the reference."""
    x = trunk.patch_embed(image)
    x = x + trunk._get_pos_embed(x.shape[1:3])
    outputs = reference_blocks(trunk.blocks, runs, HIERA_MERGED, hiera_attention, strategy, x, options)
    return [outputs[last].permute(0, 3, 1, 2) for last in trunk.stage_ends]


def assert_matches_reference(outputs, expected):
    for out, ref in zip(outputs, expected, strict=True):
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


OPTIONS = [{}, {"prop_attn": True}, {"exclude_padding": True}, {"metric": "keys"}]
CASES = [
    pytest.param(name, options, id="-".join([name, *(f"{k}={v}" for k, v in options.items())]))
    for name, options in [(name, {}) for name in STRATEGIES] + [("tome", options) for options in OPTIONS[1:]]
]


@pytest.mark.parametrize("scope", ["block", "span"])
@pytest.mark.parametrize(("strategy_name", "options"), CASES)
def test_sam_vit_matches_the_per_window_reference(registry, scope, strategy_name, options):
    """16 x 16 grid in 5 x 5 windows: the last row and column of windows are mostly padding."""
    encoder = deep_encoder().double()
    image = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    upstream = copy.deepcopy(encoder)
    tomeplug.patch(encoder, strategy_name, r=R, scope=scope, **options)
    strategy = registry.strategy(strategy_name)(r=R)
    with torch.no_grad():
        expected = reference_sam(upstream, SAM_RUNS[scope], strategy, image, options)
        assert not torch.allclose(expected, encode(upstream, image))  # the merge changes the output
        assert_matches_reference([encode(encoder, image)], [expected])


def test_hq_sam_vit_matches_the_per_window_reference(registry):
    encoder = deep_encoder("segment_anything_hq").double()
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    upstream = copy.deepcopy(encoder)
    tomeplug.patch(encoder, "pitome", r=R, scope="span", prop_attn=True)
    strategy = registry.strategy("pitome")(r=R)
    with torch.no_grad():
        expected = reference_sam(upstream, SAM_RUNS["span"], strategy, image, {"prop_attn": True})
        assert_matches_reference([encode(encoder, image)], [expected])


@pytest.mark.parametrize("scope", ["block", "span"])
@pytest.mark.parametrize(("strategy_name", "options"), CASES)
def test_hiera_matches_the_per_window_reference(registry, scope, strategy_name, options):
    """Unpadded windows (blocks 0, 1, 3, 4), padded 6 x 6 windows over the 8 x 8 map (6, 7, 9) and 3 x 3 over
    the 4 x 4 map (11), a global block (8)."""
    trunk = tiny_hiera().double()
    image = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    upstream = copy.deepcopy(trunk)
    tomeplug.patch(trunk, strategy_name, layers=HIERA_MERGED, r=R, scope=scope, **options)
    strategy = registry.strategy(strategy_name)(r=R)
    with torch.no_grad():
        expected = reference_hiera(upstream, HIERA_RUNS[scope], strategy, image, options)
        assert not torch.allclose(expected[-1], upstream(image)[-1])
        assert_matches_reference(trunk(image), expected)

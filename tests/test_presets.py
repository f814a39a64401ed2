"""Named schedules from the literature: layers="paper"."""

from __future__ import annotations

import pytest
from tiny_models import tiny_sam_encoder

import tomeplug
from tomeplug.presets import find_preset

PAPER_VIT_L = [0, 4, 5, 10, 16, 17, 19, 20, 22, 23]


@pytest.fixture(scope="module")
def deep_encoder():
    """A SAM ViT with ViT-L's depth (24 blocks) at tiny width."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT
    from torch import nn

    return ImageEncoderViT(
        img_size=64, patch_size=16, embed_dim=16, depth=24, num_heads=2, out_chans=8, use_rel_pos=True,
        window_size=2, global_attn_indexes=[5, 11, 17, 23], norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()  # fmt: skip


def test_paper_preset_on_vit_l_depth(deep_encoder):
    handle = tomeplug.patch(deep_encoder, "pitome", layers="paper")
    assert list(handle.schedule) == PAPER_VIT_L
    config = handle.schedule[0].strategy
    assert (config.r, config.margin, config.alpha) == (0.5, 0.5, 1.0)
    patched = [i for i, b in enumerate(deep_encoder.blocks) if hasattr(b.attn, "tomeplug_setting")]
    assert patched == PAPER_VIT_L


def test_preset_params_are_defaults(deep_encoder):
    assert tomeplug.patch(deep_encoder, "pitome", layers="paper", r=0.25).schedule[4].strategy.r == 0.25
    assert (
        tomeplug.patch(deep_encoder, "tome", layers="paper").schedule[4].strategy.r == 0.5
    )  # tome has no margin: skipped
    config = tomeplug.get_registry().strategy("tome")(r=0.1)
    assert tomeplug.patch(deep_encoder, config, layers="paper").schedule[4].strategy.r == 0.1  # explicit config wins


def test_preset_for_another_model_is_an_error():
    with pytest.raises(ValueError, match=r"preset 'paper' was made for SAM / HQ-SAM ViT-L \(24 blocks\).*4 blocks"):
        tomeplug.patch(tiny_sam_encoder(), "tome", layers="paper")


def test_unknown_preset():
    with pytest.raises(KeyError, match="unknown schedule preset 'fast'; presets: paper"):
        tomeplug.patch(tiny_sam_encoder(), "tome", layers="fast")


def test_hiera_l_preset_is_known():
    adapters = {name: entry.obj for name, entry in tomeplug.get_registry().adapters.items()}
    preset = find_preset("paper", adapters["sam2_hiera"], 48)
    assert preset.layers == (31, 32, 34, 35, 37, 38, 44, 45, 46, 47) and preset.params["r"] == 0.5
    assert find_preset("paper", adapters["hq_sam_vit"], 24).layers == tuple(PAPER_VIT_L)
    with pytest.raises(
        ValueError,
        match=r"made for SAM / HQ-SAM ViT-L \(24 blocks\); SAM 2.1 Hiera-L \(48 blocks\), not for this timm_vit",
    ):
        find_preset("paper", adapters["timm_vit"], 12, adapters.values())

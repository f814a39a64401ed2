"""Bad input gets a clear error that names the problem and the fix; nothing is left half-patched."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_sam_encoder

import tomeplug


@pytest.fixture
def encoder():
    return tiny_sam_encoder()


def assert_unpatched(model):
    assert tomeplug.active_patch(model) is None
    assert all(type(m).__name__ == "Attention" for m in (b.attn for b in model.blocks))


def test_unknown_strategy_lists_installed(encoder):
    with pytest.raises(KeyError, match=r"unknown strategy 'nope'; installed strategies: .*tome"):
        tomeplug.patch(encoder, "nope")
    assert_unpatched(encoder)


def test_unsupported_model_lists_adapters():
    with pytest.raises(TypeError, match=r"no adapter supports torch\.nn\.modules\.linear\.Linear.*sam_vit"):
        tomeplug.patch(torch.nn.Linear(2, 2), "tome")


def test_empty_schedule(encoder):
    with pytest.raises(ValueError, match=r"selects no block.*0\.\.3"):
        tomeplug.patch(encoder, "tome", layers=[])
    with pytest.raises(ValueError, match="selects no block"):
        tomeplug.patch(encoder, layers={})
    assert_unpatched(encoder)


@pytest.mark.parametrize("index", [4, 100, -1])
def test_block_out_of_range_states_depth(encoder, index):
    with pytest.raises(IndexError, match=rf"block {index} is out of range.*has 4 blocks \(indices 0\.\.3\)"):
        tomeplug.patch(encoder, "tome", layers=[0, index])
    assert_unpatched(encoder)


def test_out_of_range_leaves_earlier_patch_intact(encoder):
    handle = tomeplug.patch(encoder, "tome", layers=[1])
    with pytest.raises(IndexError):
        tomeplug.patch(encoder, "tome", layers=[9])
    assert tomeplug.active_patch(encoder) is handle


@pytest.mark.parametrize("r", [-0.1, 0.75, 1.0, 2])
def test_r_out_of_range(encoder, strategy_name, r):
    max_r = tomeplug.get_registry().strategy(strategy_name).max_r
    with pytest.raises(ValueError, match=rf"r={r} is out of range for strategy '{strategy_name}'.*\[0, {max_r}\]"):
        tomeplug.patch(encoder, strategy_name, r=r)
    assert_unpatched(encoder)


def test_r_wrong_type(encoder):
    with pytest.raises(TypeError, match="r must be a float"):
        tomeplug.patch(encoder, "tome", r="0.5")


def test_unknown_parameter_lists_known(encoder):
    with pytest.raises(
        TypeError,
        match=r"strategy 'tome' has no parameter 'margn'; its parameters are: r; every strategy also takes the "
        r"options: scope, metric, prop_attn, exclude_padding",
    ):
        tomeplug.patch(encoder, "tome", margn=0.5)


def test_duplicate_and_non_int_blocks(encoder):
    with pytest.raises(ValueError, match="more than once"):
        tomeplug.patch(encoder, "tome", layers=[1, 1])
    with pytest.raises(TypeError, match="block indices must be ints"):
        tomeplug.patch(encoder, "tome", layers=[1.0])
    with pytest.raises(TypeError, match="layers must be block indices"):
        tomeplug.patch(encoder, "tome", layers=b"0,1")


def test_strategy_required_without_mapping(encoder):
    with pytest.raises(TypeError, match="strategy is required"):
        tomeplug.patch(encoder, layers=[0])


def test_unknown_adapter_name(encoder):
    with pytest.raises(KeyError, match="unknown adapter 'vit'; installed adapters: .*hq_sam_vit"):
        tomeplug.patch(encoder, "tome", adapter="vit")


def test_adapter_that_patches_nothing_is_an_error(encoder):
    class Lazy(tomeplug.Adapter):
        name = "lazy"

        def matches(self, model):
            return True

        def blocks(self, model):
            return list(model.blocks)

        def patch_block(self, model, index, schedule):
            pass

    with pytest.raises(RuntimeError, match="adapter 'lazy' patched nothing in block 0"):
        tomeplug.patch(encoder, "tome", adapter=Lazy())
    assert_unpatched(encoder)


def test_unsupported_scope(encoder):
    with pytest.raises(ValueError, match="scope='blocks' is not a merge scope; choose one of attn, block, span"):
        tomeplug.patch(encoder, "tome", scope="blocks")


def test_scope_the_adapter_lacks(encoder):
    from tomeplug_adapters.sam_vit import SamViTAdapter

    class AttnOnly(SamViTAdapter):
        name = "attn_only"
        scopes = ("attn",)

    with pytest.raises(ValueError, match="block 0: adapter 'attn_only' supports the merge scopes attn, not 'span'"):
        tomeplug.patch(encoder, "tome", layers=[0], scope="span", adapter=AttnOnly())
    assert_unpatched(encoder)

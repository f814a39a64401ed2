"""Adapters are plugins too: a third-party adapter for a toy transformer, registered through the hook.

This module is itself the plugin: it defines a toy model, a merging mixin for its attention and an
adapter, and implements ``tomeplug_register_adapters``. Once registered, ``tomeplug.patch(toy, "tome")``
finds the adapter by ``matches`` and every registered strategy works with it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tomeplug
from tomeplug.__main__ import format_listing
from tomeplug.adapter import class_path
from tomeplug.classswap import swap_class
from tomeplug.metric import plan_merge
from tomeplug.plan import log_size_bias
from tomeplug.setting import Setting
from tomeplug.testing import check_adapter

GRID = (5, 6)  # odd height: 2x2 cells at the edge are partial


class ToyAttention(nn.Module):
    """Multi-head self-attention over the (B, N, C) tokens of an (h, w) grid."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.heads, self.grid = heads, grid
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def attend(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """Attention over whatever tokens it is given: (B, M, C) -> (B, M, C)."""
        b, m, c = x.shape
        q, k, v = self.qkv(x).reshape(b, m, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (B, heads, M, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, M, hd)
        return self.proj(out.transpose(1, 2).reshape(b, m, c))

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x)


class ToyBlock(nn.Module):
    """Pre-norm transformer block: attention then MLP, each residual."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = ToyAttention(dim, heads, grid)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ToyTransformer(nn.Module):
    """Tokens of a grid, plus a learned position embedding, through ``depth`` blocks."""

    def __init__(self, grid: tuple[int, int] = GRID, dim: int = 16, heads: int = 2, depth: int = 3) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, grid[0] * grid[1], dim) * 0.2)
        self.blocks = nn.ModuleList(ToyBlock(dim, heads, grid) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos  # (B, N, C)
        for block in self.blocks:
            x = block(x)
        return x


class MergingToyAttention(nn.Module):
    """Mixin over ``ToyAttention``: plan with the block's setting, attend over merged tokens, unmerge."""

    tomeplug_setting: Setting

    def forward(self, x: Tensor) -> Tensor:
        setting = self.tomeplug_setting
        if setting.num_to_merge(x.shape[1]) == 0:
            return super().forward(x)  # r = 0 runs the original code: bit-exact
        plan = plan_merge(setting, x, self.qkv, self.heads, self.grid)  # honours metric= and exclude_padding=
        bias = log_size_bias(plan.size, x.dtype) if setting.prop_attn else None  # (B, 1, 1, M)
        return plan.unmerge(self.attend(plan.merge(x), bias))


class ToyAdapter(tomeplug.Adapter):
    """this test module's ToyTransformer"""

    name = "toy"

    def matches(self, model: nn.Module) -> bool:
        """True for a ``ToyTransformer`` (by class name)."""
        return class_path(model) == f"{__name__}.ToyTransformer"

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The model's blocks in forward order."""
        return list(model.blocks)

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the block's attention for the merging one."""
        attn = model.blocks[index].attn
        swap_class(attn, MergingToyAttention)
        attn.tomeplug_setting = schedule[index]


class IdleToyAttention(nn.Module):
    """Broken mixin: swapped in, but never merges."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


class IdleToyAdapter(ToyAdapter):
    """Broken: patches each block with a mixin that ignores its config."""

    name = "idle_toy"

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        swap_class(model.blocks[index].attn, IdleToyAttention)


class ScalingToyAdapter(ToyAdapter):
    """Broken: changes a weight in place when patching, which unpatching cannot undo."""

    name = "scaling_toy"

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        super().patch_block(model, index, schedule)
        with torch.no_grad():
            model.blocks[index].attn.proj.weight.mul_(2.0)


@tomeplug.hookimpl
def tomeplug_register_adapters(register):
    """Register the toy adapter, as a third-party package's plugin module would."""
    register(ToyAdapter())


@pytest.fixture(autouse=True)
def toy_plugin(registry):
    registry.register_plugin(sys.modules[__name__], "toy_plugin")
    return registry


def make_toy() -> ToyTransformer:
    torch.manual_seed(0)
    return ToyTransformer().eval()


def make_tokens() -> Tensor:
    return torch.randn(2, GRID[0] * GRID[1], 16, generator=torch.Generator().manual_seed(1))


def run(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def test_registered_with_its_origin(toy_plugin):
    assert "toy" in tomeplug.list_adapters()
    assert "registered by plugin 'toy_plugin' (registered at runtime)" in format_listing(toy_plugin)


def test_patch_by_name_merges(strategy_name):
    toy, x = make_toy(), make_tokens()
    reference = run(toy, x)
    seen = []
    toy.blocks[1].attn.qkv.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    with tomeplug.patch(toy, strategy_name, layers=[1], r=0.3) as handle:
        assert handle.adapter == "toy"
        merged = run(toy, x)
    n = GRID[0] * GRID[1]
    assert seen == [n - int(0.3 * n)]  # the attention saw the merged tokens only
    assert merged.shape == reference.shape and not torch.equal(merged, reference)
    assert torch.equal(run(toy, x), reference)


def test_r0_and_unpatch_are_bit_exact():
    toy, x = make_toy(), make_tokens()
    reference = run(toy, x)
    tomeplug.patch(toy, "tome", r=0.0)
    assert torch.equal(run(toy, x), reference)
    tomeplug.patch(toy, "tome", r=0.3, prop_attn=True)
    assert not torch.equal(run(toy, x), reference)
    assert tomeplug.unpatch(toy)
    assert torch.equal(run(toy, x), reference)
    assert all(type(block.attn) is ToyAttention for block in toy.blocks)


def test_toy_adapter_conforms(strategy_name):
    check_adapter("toy", make_toy, make_tokens, strategy=strategy_name)


@pytest.mark.parametrize(
    ("adapter", "message"),
    [(IdleToyAdapter(), "left the output unchanged"), (ScalingToyAdapter(), "r=0 in scope 'attn' changed the output")],
)
def test_broken_adapter_fails(adapter, message):
    with pytest.raises(AssertionError, match=message):
        check_adapter(adapter, make_toy, make_tokens)

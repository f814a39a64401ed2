"""FLOP counting: hand-computed ops, SDPA, merged vs. dense encoders, and the loud uncounted-op check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_sam_encoder
from torch import nn

import tomeplug
from tomeplug_eval import flops
from tomeplug_eval.flops import UncountedFlopsError, check_counted, count_flops, is_matmul_class


class Bmm(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b)


class Sdpa(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class BroadcastMatmul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class Cdist(nn.Module):
    """An op that does matmul-class work but has no FLOP handle (``aten::cdist``)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cdist(a, b)


def test_linear_counts_multiply_adds():
    report = count_flops(nn.Linear(8, 16), torch.randn(3, 5, 8))
    assert report.total == 3 * 5 * 8 * 16
    assert report.by_operator == {"linear": 3 * 5 * 8 * 16}
    assert report.gflops == pytest.approx(3 * 5 * 8 * 16 / 1e9)


def test_extra_handles_override_the_built_in_ones():
    assert count_flops(nn.Linear(8, 16), torch.randn(2, 8), extra_handles={"aten::linear": lambda i, o: 7}).total == 7


def test_bmm():
    assert count_flops(Bmm(), (torch.randn(4, 6, 7), torch.randn(4, 7, 9))).total == 4 * 6 * 7 * 9


def test_matmul_with_broadcast_rhs_counts_every_batch():
    assert count_flops(BroadcastMatmul(), (torch.randn(6, 7), torch.randn(4, 7, 9))).total == 4 * 6 * 7 * 9


def test_sdpa_counts_both_products():
    b, heads, length, keys, e, ev = 2, 3, 5, 7, 8, 4
    inputs = (
        torch.randn(b, heads, length, e),
        torch.randn(b, heads, keys, e),
        torch.randn(b, heads, keys, ev),
        torch.randn(b, 1, length, keys),
    )
    report = count_flops(Sdpa(), inputs)
    assert report.by_operator == {"scaled_dot_product_attention": b * heads * length * keys * (e + ev)}


def test_merged_encoder_has_fewer_flops_and_r0_equals_dense():
    encoder, x = tiny_sam_encoder(), torch.randn(1, 3, 256, 256)
    dense = count_flops(encoder, x)
    with tomeplug.patch(encoder, "tome", r=0.0):
        assert count_flops(encoder, x).total == dense.total
    with tomeplug.patch(encoder, "tome", r=0.5):
        merged = count_flops(encoder, x)
    assert 0.5 * dense.total < merged.total < dense.total
    assert merged.by_operator["scaled_dot_product_attention"] > 0
    assert {"scatter_add_", "gather", "argsort"} <= set(merged.overhead)  # listed apart, not in the total
    assert merged.total == sum(merged.by_operator.values())
    assert "aten::gelu" in merged.uncounted


@pytest.mark.parametrize(
    "op", ["aten::matmul", "aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm", "aten::linear", "aten::einsum",
           "aten::scaled_dot_product_attention", "aten::_convolution", "aten::conv2d", "aten::_scaled_mm", "cdist"],
)  # fmt: skip
def test_matmul_class_names(op):
    assert is_matmul_class(op)


@pytest.mark.parametrize("op", ["aten::gelu", "aten::cummax", "aten::softmax", "aten::add", "aten::numpy_T"])
def test_elementwise_names_are_not_matmul_class(op):
    assert not is_matmul_class(op)


def test_check_counted_names_the_missing_ops():
    check_counted(["aten::gelu", "aten::softmax"])
    with pytest.raises(UncountedFlopsError, match=r"aten::baddbmm_fake, aten::bmm_x"):
        check_counted(["aten::gelu", "aten::bmm_x", "aten::baddbmm_fake"])


def test_unhandled_matmul_class_op_raises():
    with pytest.raises(UncountedFlopsError, match="aten::cdist"):
        count_flops(Cdist(), (torch.randn(2, 5, 3), torch.randn(2, 4, 3)))


def test_removing_a_handle_raises_instead_of_undercounting(monkeypatch):
    handles = {op: handle for op, handle in flops.FLOP_HANDLES.items() if "scaled_dot_product" not in op}
    monkeypatch.setattr(flops, "FLOP_HANDLES", handles)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(UncountedFlopsError, match="scaled_dot_product_attention"):
        count_flops(Sdpa(), (q, q, q, torch.zeros(1, 1, 4, 4)))


def test_every_strategy_is_counted_without_unhandled_ops(strategy_name):
    encoder, x = tiny_sam_encoder(), torch.randn(1, 3, 256, 256)
    dense = count_flops(encoder, x).total
    with tomeplug.patch(encoder, strategy_name, r=0.25):
        merged = count_flops(encoder, x)
    assert merged.total < dense and merged.overhead


def test_sam3_vit_matches_a_hand_count_with_rope_and_sdpa():
    """sam3's ViT (tiny, no relative positions): every counted op against its hand count, RoPE included."""
    pytest.importorskip("sam3")
    from tiny_models import tiny_sam3_vit

    vit = tiny_sam3_vit(rel_pos_blocks=())  # 10x10 grid, 4x4 windows padded to 12x12, global blocks 2 and 4
    c, heads, hidden, windowed, global_ = 64, 4, 296, 3, 2
    padded, grid, windows = 144, 100, 9
    tokens = windowed * padded + global_ * grid  # the attention's qkv and proj run on padded windows
    expected = {
        "conv": grid * 3 * 14 * 14 * c,  # patch embedding
        "linear": tokens * 4 * c * c + 5 * grid * 2 * c * hidden,  # qkv + proj, MLP
        "layer_norm": 5 * grid * c * 11,  # fvcore: 5 per element; ln_pre and two per block
        "scaled_dot_product_attention": windowed * windows * heads * 16 * 16 * 32 + global_ * heads * grid * grid * 32,
        "complex_mul": 4 * 2 * tokens * c // 2,  # q and k: hd / 2 complex channels per head, 4 real multiplies each
    }
    report = count_flops(vit, torch.randn(1, 3, 140, 140))
    assert report.by_operator == expected
    with tomeplug.patch(vit, "tome", r=0.5, scope="attn"):
        merged = count_flops(vit, torch.randn(1, 3, 140, 140)).by_operator
    assert merged["complex_mul"] == expected["complex_mul"] // 2  # merged queries and keys rotated at kept cells

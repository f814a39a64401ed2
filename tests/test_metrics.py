"""Metrics against hand-computed cases: mask IoU, boundary IoU, fidelity helpers, the mean accumulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tomeplug_eval.metrics import (
    MeanAccumulator,
    boundary_iou,
    boundary_width,
    embedding_cosine,
    mask_boundary,
    mask_iou,
)


def square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_mask_iou_of_offset_squares():
    # 10x10 squares, B shifted 2 px right: intersection 10x8 = 80, union 100 + 100 - 80 = 120 -> 2/3
    a, b = square((20, 20), 5, 2, 10), square((20, 20), 5, 4, 10)
    assert mask_iou(a, b) == pytest.approx(2 / 3)
    # shifted 2 px right and 2 px down: intersection 8x8 = 64, union 200 - 64 = 136 -> 8/17
    assert mask_iou(a, square((20, 20), 7, 4, 10)) == pytest.approx(8 / 17)


def test_mask_iou_perfect_disjoint_empty():
    a = square((20, 20), 0, 0, 5)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, square((20, 20), 10, 10, 5)) == 0.0
    empty = np.zeros((20, 20), bool)
    assert mask_iou(empty, empty) == 1.0  # documented: both empty agree perfectly
    assert mask_iou(a, empty) == 0.0 and mask_iou(empty, a) == 0.0
    assert mask_iou(a.astype(np.uint8) * 255, a) == 1.0  # non-zero is foreground


def test_mask_iou_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        mask_iou(np.zeros((4, 4)), np.zeros((4, 5)))


def test_boundary_width_follows_the_diagonal():
    assert boundary_width((20, 20)) == 1  # 0.02 * 28.28 = 0.57 -> 1
    assert boundary_width((200, 200)) == 6  # 0.02 * 282.8 = 5.66 -> 6
    assert boundary_width((4, 4), 0.0) == 1  # never below one pixel
    assert boundary_width((20, 20), 0.08) == 2  # 2.26 -> 2


def test_mask_boundary_bands():
    # 10x10 square, d = 1: the 1-px ring, 100 - 8*8 = 36 pixels; d = 2: 100 - 6*6 = 64
    a = square((20, 20), 5, 2, 10)
    assert mask_boundary(a).sum() == 36
    assert mask_boundary(a, 0.08).sum() == 64
    assert not (mask_boundary(a) & ~a).any()  # the band lies inside the mask
    # the image border is an edge: a full 20x20 mask has a 1-px frame, 400 - 18*18 = 76
    assert mask_boundary(np.ones((20, 20), bool)).sum() == 76


def test_boundary_iou_of_offset_squares():
    # d = 1, both rings are 36 px. B is A shifted 2 px right. Shared: the top and bottom rows over columns
    # 4..11, 2 x 8 = 16 (A's right column and B's left column lie in the other's interior). 16 / (72 - 16) = 2/7
    a, b = square((20, 20), 5, 2, 10), square((20, 20), 5, 4, 10)
    assert boundary_iou(a, b) == pytest.approx(2 / 7)
    assert boundary_iou(a, a) == 1.0
    assert boundary_iou(a, square((20, 20), 12, 12, 5)) == 0.0
    empty = np.zeros((20, 20), bool)
    assert boundary_iou(empty, empty) == 1.0 and boundary_iou(a, empty) == 0.0


def test_boundary_iou_is_more_sensitive_to_a_one_pixel_shift():
    # 100x100 square in 200x200, shifted 1 px right; d = 6, each band 100^2 - 88^2 = 2256 px.
    # Shared: top/bottom bands 2 * 6 rows * 99 cols = 1188, left/right bands 88 rows * 2 * 5 cols = 880.
    # Boundary IoU = 2068 / (4512 - 2068) = 2068 / 2444 ~ 0.846; mask IoU = 9900 / 10100 ~ 0.980.
    a, b = square((200, 200), 50, 50, 100), square((200, 200), 50, 51, 100)
    assert mask_iou(a, b) == pytest.approx(9900 / 10100)
    assert boundary_iou(a, b) == pytest.approx(2068 / 2444)
    assert boundary_iou(a, b) < mask_iou(a, b) - 0.1


def test_embedding_cosine_per_image():
    a = torch.randn(3, 4, 2, 2)
    b = torch.stack([a[0], -a[1], torch.zeros(4, 2, 2)])
    cos = embedding_cosine(a, b)
    assert cos.shape == (3,)
    np.testing.assert_allclose(cos, [1.0, -1.0, 0.0], atol=1e-12)
    # orthogonal after flattening: [1, 0, 0, 0] . [0, 1, 0, 0] = 0; numpy and bf16 inputs accepted
    assert embedding_cosine(np.eye(4)[None, 0], np.eye(4)[None, 1])[0] == 0.0
    assert embedding_cosine(a.bfloat16(), a.bfloat16()) == pytest.approx(np.ones(3))
    assert embedding_cosine(np.zeros((1, 5)), np.zeros((1, 5)))[0] == 1.0  # documented
    with pytest.raises(ValueError, match="one shape"):
        embedding_cosine(np.zeros((2, 3)), np.zeros((3, 2)))


def test_mean_accumulator_is_order_free_across_shards():
    values = [0.1, 0.7, 1e-9, 0.3333, 0.9, 0.25]
    whole = MeanAccumulator()
    for v in values:
        whole.add(iou=v, biou=v / 2)
    ranks = [MeanAccumulator(), MeanAccumulator()]
    for i, v in enumerate(reversed(values)):
        ranks[i % 2].add(iou=v, biou=v / 2)
    merged = ranks[1].merge(ranks[0])
    assert merged.means() == whole.means()  # exactly equal, not just close
    assert whole.mean("iou") == pytest.approx(sum(values) / 6)
    assert merged.count("iou") == 6 and whole.count("missing") == 0
    with pytest.raises(KeyError, match="missing"):
        whole.mean("missing")

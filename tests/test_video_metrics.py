"""J, F and J&F as the DAVIS benchmark defines them: hand-checked cases, a brute-force F, multi-object videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomeplug_eval.video import VideoItem, boundary_f, boundary_map, boundary_radius, mean_scores, region_j, score_video
from tomeplug_eval.video.metrics import disk


def square(shift: int = 0, size: int = 20) -> np.ndarray:
    """A 10x10 square at rows 5..14, columns 5+shift..14+shift of a size x size image."""
    mask = np.zeros((size, size), bool)
    mask[5:15, 5 + shift : 15 + shift] = True
    return mask


def test_boundary_radius_is_the_reference_ceil():
    assert boundary_radius((20, 20)) == 1  # ceil(0.008 * 28.28) = ceil(0.23)
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6) = ceil(7.84); round() would give 8 too
    assert boundary_radius((100, 100)) == 2  # ceil(1.13) = 2 where round() gives 1
    assert boundary_radius((480, 854), bound_th=3) == 3  # a threshold >= 1 is a pixel count
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]] and disk(2).sum() == 13


def test_boundary_map_of_a_square_is_an_11x11_outline():
    # seg2bmap marks pixels whose right, lower or lower-right neighbour differs: the outline is shifted half a
    # pixel towards the origin, rows 4..14 and columns 4..14, 4 * 11 - 4 = 40 pixels
    edges = boundary_map(square())
    outline = np.zeros((20, 20), bool)
    outline[4:15, 4:15] = True
    outline[5:14, 5:14] = False
    assert np.array_equal(edges, outline) and edges.sum() == 40


def test_shifted_square_by_hand():
    gt = square()
    # 1 px right: overlap 10 x 9 = 90, union 10 x 11 = 110. Every boundary pixel of either mask is within the
    # radius-1 cross of the other's (outlines one column apart): P = R = 1, F = 1.
    assert region_j(square(1), gt) == pytest.approx(90 / 110)
    assert boundary_f(square(1), gt) == 1.0
    # 3 px right: J = 70 / 130. Predicted outline (rows 4..14, cols 7..17): of its top row x = 7..14 lie on the
    # true top row and x = 15 touches it (9 px), the same on the bottom row (9), its left column meets the true
    # outline only at y = 5 and y = 13 (2), its right column x = 17 nowhere: P = 20 / 40. By symmetry R = 20 / 40,
    # so F = 2 * 0.5 * 0.5 / (0.5 + 0.5) = 0.5.
    assert region_j(square(3), gt) == pytest.approx(70 / 130)
    assert boundary_f(square(3), gt) == pytest.approx(0.5)


def test_empty_cases_follow_the_reference():
    empty = np.zeros((20, 20), bool)
    assert region_j(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    assert region_j(square(), empty) == 0.0 and boundary_f(square(), empty) == 0.0  # P = 0, R = 1
    assert boundary_f(empty, square()) == 0.0  # P = 1, R = 0


def brute_force_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """F from pairwise Euclidean distances between boundary pixels (no dilation)."""
    a, b = np.argwhere(boundary_map(pred)), np.argwhere(boundary_map(gt))
    near = np.hypot(*(a[:, None, :] - b[None, :, :]).transpose(2, 0, 1)) <= radius
    p, r = near.any(1).mean(), near.any(0).mean()
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@pytest.mark.parametrize("seed", range(5))
def test_boundary_f_equals_a_brute_force_count(seed: int):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
    pred, gt = (rng.random((shape[0] // 8 + 1, shape[1] // 8 + 1)) > 0.5 for _ in range(2))
    pred, gt = (np.kron(m, np.ones((8, 8), bool))[: shape[0], : shape[1]] for m in (pred, gt))
    pred[rng.integers(0, shape[0], 30), rng.integers(0, shape[1], 30)] ^= True  # ragged edges, lone pixels
    assert boundary_f(pred, gt) == pytest.approx(brute_force_f(pred, gt, boundary_radius(shape)))


def video(frames: int = 5) -> VideoItem:
    """Two objects: 1 is the square moving right by 1 px a frame; 2 is a bar appearing on frame 2."""
    masks = {}
    for t in range(frames):
        bar = np.zeros((20, 20), bool)
        if t >= 2:
            bar[17:19, 2:18] = True
        masks[t] = {1: square(t % 4), 2: bar}
    paths = [Path(f"{t:05d}.jpg") for t in range(frames)]
    return VideoItem("two", paths, masks, prompts={1: 0, 2: 2}, size=(20, 20))


def test_perfect_predictions_score_one():
    item = video()
    scores = score_video(item, item.masks)
    assert all(s["J"] == s["F"] == s["J&F"] == 1.0 for s in scores.values())
    # frames 1..3 (first and last dropped); object 2 after its prompt frame 2 only: frame 3
    assert scores[1]["frames"] == 3 and scores[2]["frames"] == 1


def test_multi_object_sequence_and_dataset_mean():
    item = video()
    predictions = {t: {1: square(), 2: objects[2]} for t, objects in item.masks.items()}  # object 1 never moves
    scores = score_video(item, predictions)
    # object 1 scored on frames 1, 2, 3 where the truth is shifted by 1, 2, 3 px
    expected_j = (90 / 110 + 80 / 120 + 70 / 130) / 3
    assert scores[1]["J"] == pytest.approx(expected_j)
    assert scores[1]["F"] == pytest.approx((1.0 + boundary_f(square(), square(2)) + 0.5) / 3)
    assert scores[2]["J&F"] == 1.0
    overall = mean_scores(list(scores.values()))
    assert overall["J"] == pytest.approx((expected_j + 1) / 2) and overall["objects"] == 2
    assert overall["J&F"] == pytest.approx((overall["J"] + overall["F"]) / 2)
    assert overall["J&F"] == pytest.approx((scores[1]["J&F"] + scores[2]["J&F"]) / 2)


def test_void_is_background_unless_excluded():
    item = video()
    void = np.zeros((20, 20), bool)
    void[:, 15:] = True  # hides the part of the moved square the prediction misses
    item = VideoItem(item.name, item.frame_paths, item.masks, item.prompts, item.size, void={t: void for t in range(5)})
    predictions = {t: {1: square(), 2: objects[2]} for t, objects in item.masks.items()}
    assert score_video(item, predictions)[1]["J"] < 1.0
    assert score_video(item, predictions, exclude_void=True)[1]["J"] > score_video(item, predictions)[1]["J"]


def test_unscorable_objects_and_missing_predictions():
    first = {0: {1: square()}}  # MOSE's validation set: the first frame only, so nothing to score
    item = VideoItem("first-only", [Path(f"{t:05d}.jpg") for t in range(4)], first, prompts={1: 0}, size=(20, 20))
    assert score_video(item, {})[1] == {"J": None, "F": None, "J&F": None, "frames": 0}
    assert mean_scores(list(score_video(item, {}).values())) == {"J": None, "F": None, "J&F": None, "objects": 0}
    with pytest.raises(KeyError, match="object 1 on frame 1"):
        score_video(video(), first)

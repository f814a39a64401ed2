"""Tests for tomeplug.torchvision_compat: the pure-PyTorch nms and the torchvision import fallback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tomeplug import torchvision_compat
from tomeplug.torchvision_compat import ensure_torchvision, nms

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def reference_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes, same arithmetic order as torchvision; 0 for an empty union."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    width = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    height = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = width * height
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes: list[tuple[float, ...]], scores: list[float], threshold: float) -> list[int]:
    """Brute-force greedy NMS: stable sort by score descending, keep a box unless a kept box overlaps it."""
    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(reference_iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def reference_batched_nms(boxes, scores, classes, threshold: float) -> list[int]:
    """Per-class reference NMS, merged in decreasing score order (scores must be distinct)."""
    kept: list[int] = []
    for cls in set(classes):
        members = [i for i, c in enumerate(classes) if c == cls]
        sub_kept = reference_nms([boxes[i] for i in members], [scores[i] for i in members], threshold)
        kept.extend(members[k] for k in sub_kept)
    return sorted(kept, key=lambda i: -scores[i])


@st.composite
def box_sets(draw, coordinate=None, min_size: int = 0, unique_scores: bool = False):
    """Box lists with duplicates, zero-area boxes and (unless unique_scores) tied scores."""
    if coordinate is None:
        coordinate = st.integers(0, 8).map(float)
    corner_pairs = st.tuples(coordinate, coordinate, coordinate, coordinate)
    box = corner_pairs.map(lambda c: (min(c[0], c[2]), min(c[1], c[3]), max(c[0], c[2]), max(c[1], c[3])))
    base = draw(st.lists(box, min_size=min(min_size, 1), max_size=12))
    boxes = draw(st.lists(st.sampled_from(base), min_size=min_size, max_size=25)) if base else []
    tied = st.sampled_from([0.1, 0.5, 0.9])
    score = st.integers(0, 1000).map(lambda s: s / 1000) if unique_scores else tied
    scores = draw(st.lists(score, min_size=len(boxes), max_size=len(boxes), unique=unique_scores))
    return boxes, scores


def as_tensors(boxes, scores, dtype=torch.float64):
    return torch.tensor(boxes, dtype=dtype).reshape(-1, 4), torch.tensor(scores, dtype=dtype)


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(box_sets(), box_sets(coordinate=st.floats(-50, 50, allow_nan=False, width=32))),
    threshold=st.one_of(st.sampled_from(THRESHOLDS), st.floats(0, 1)),
)
def test_nms_matches_reference(data, threshold):
    boxes, scores = data
    kept = nms(*as_tensors(boxes, scores), threshold)
    assert kept.dtype == torch.int64
    assert kept.tolist() == reference_nms(boxes, scores, threshold)


def test_nms_empty_input():
    kept = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert kept.dtype == torch.int64 and kept.shape == (0,)


def test_nms_ties_duplicates_and_zero_area():
    boxes = [(0, 0, 4, 4), (0, 0, 4, 4), (2, 2, 2, 2), (2, 2, 2, 2), (0, 0, 4, 4), (5, 5, 6, 9)]
    scores = [0.5, 0.9, 0.9, 0.5, 0.9, 0.1]
    for dtype in (torch.float32, torch.float64):
        kept = nms(*as_tensors(boxes, scores, dtype), 0.5)
        # Stable among ties: box 1 (first 0.9) suppresses its duplicates 4 and 0; zero-area boxes never overlap.
        assert kept.tolist() == [1, 2, 3, 5] == reference_nms(boxes, scores, 0.5)


def test_pairwise_iou_has_no_nan_for_empty_union():
    iou = torchvision_compat.pairwise_box_iou(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 3.0]]))
    assert not iou.isnan().any()
    assert iou.tolist() == [[0.0, 0.0], [0.0, 0.0]]


@pytest.fixture(scope="module")
def torchvision_module():
    if not HAS_TORCHVISION:
        pytest.skip("torchvision is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ensure_torchvision()
        import torchvision
    return torchvision


@pytest.mark.parametrize("package", ["segment_anything", "timm", "sam2", "segment_anything_hq"])
def test_dependents_import_after_ensure(torchvision_module, package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module(package)


@settings(max_examples=150, deadline=None)
@given(data=box_sets(min_size=1, unique_scores=True), threshold=st.sampled_from(THRESHOLDS))
def test_torchvision_nms_and_batched_nms_match_reference(torchvision_module, data, threshold):
    boxes, scores = data
    classes = [i % 3 for i in range(len(boxes))]
    boxes_t, scores_t = as_tensors(boxes, scores)
    assert torchvision_module.ops.nms(boxes_t, scores_t, threshold).tolist() == reference_nms(boxes, scores, threshold)
    kept = torchvision_module.ops.batched_nms(boxes_t, scores_t, torch.tensor(classes), threshold)
    assert kept.tolist() == reference_batched_nms(boxes, scores, classes, threshold)


def test_batched_nms_large_input_uses_per_class_path(torchvision_module):
    generator = torch.Generator().manual_seed(0)
    corners = torch.randint(0, 40, (1200, 4), generator=generator).double()
    boxes_t = torch.cat([corners[:, :2].minimum(corners[:, 2:]), corners[:, :2].maximum(corners[:, 2:])], 1)
    scores_t = torch.randperm(1200, generator=generator).double() / 1200
    classes = torch.randint(0, 5, (1200,), generator=generator)
    kept = torchvision_module.ops.batched_nms(boxes_t, scores_t, classes, 0.5)
    expected = reference_batched_nms(boxes_t.tolist(), scores_t.tolist(), classes.tolist(), 0.5)
    assert kept.tolist() == expected


def test_qnms_matches_nms_on_dequantized_input(torchvision_module):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_boxes = torch.quantize_per_tensor(boxes, 1.0, 0, torch.quint8)
        q_scores = torch.quantize_per_tensor(scores, 0.01, 0, torch.quint8)
    kept = torch.ops.torchvision.qnms(q_boxes, q_scores, 0.5)
    assert kept.tolist() == nms(q_boxes.dequantize(), q_scores.dequantize(), 0.5).tolist() == [0, 2]


def run_python(code: str, extra_path: Path | None = None, **variables: str) -> subprocess.CompletedProcess:
    paths = [str(extra_path)] if extra_path else []
    paths += [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, **variables, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


COUNT_WARNINGS = """
    import json
    import warnings
    from tomeplug.torchvision_compat import ensure_torchvision
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [ensure_torchvision(), ensure_torchvision()]
        import torchvision
        results.append(ensure_torchvision())
    ours = [w for w in caught if "pure-PyTorch" in str(w.message)]
    print(json.dumps({"results": results, "ours": len(ours), "all": len(caught), "file": torchvision.__file__}))
"""


def test_does_nothing_when_torchvision_imports_normally(tmp_path):
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("__version__ = '0.0.fake'\n")
    result = run_python(COUNT_WARNINGS, extra_path=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["results"] == [False, False, False]
    assert report["ours"] == report["all"] == 0
    assert report["file"].startswith(str(tmp_path))


def test_other_import_errors_propagate(tmp_path):
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("raise RuntimeError('unrelated failure')\n")
    code = "from tomeplug.torchvision_compat import ensure_torchvision\nensure_torchvision()\n"
    result = run_python(code, extra_path=tmp_path)
    assert result.returncode != 0
    assert "RuntimeError: unrelated failure" in result.stderr


def test_returns_false_when_torchvision_is_not_installed(monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(torchvision_compat, "_fallback_active", False)
    monkeypatch.setattr(torchvision_compat.importlib.util, "find_spec", lambda name: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ensure_torchvision() is False


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
def test_warning_emitted_exactly_once_in_fresh_interpreter():
    plain = run_python("import torchvision", TOMEPLUG_TORCHVISION_HOOK="0")  # without make's import hook
    needs_fallback = "operator torchvision::nms does not exist" in plain.stderr
    assert needs_fallback or plain.returncode == 0, plain.stderr
    result = run_python(COUNT_WARNINGS)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["results"] == [needs_fallback] * 3
    assert report["ours"] == (1 if needs_fallback else 0)

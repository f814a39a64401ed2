"""tomeplug_eval.tune: the schedule search on tiny SAM, HQ-SAM and SAM 2 models, its CLI, its schedule files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from harness_helpers import run as run_harness
from tiny_models import tiny_sam, tiny_sam2, tiny_sam_encoder

import tomeplug
import tomeplug_eval
from tomeplug_eval import tune
from tomeplug_eval.data import SyntheticDataset
from tomeplug_eval.flops import count_flops
from tomeplug_eval.metrics import embedding_cosine
from tomeplug_eval.schedule_file import ScheduleFileError, read_schedule, write_schedule
from tomeplug_eval.tune import Target, TargetUnreachableError
from tomeplug_eval.tune_measure import Measurer


def seeded(build, seed: int = 0):
    """``build()`` after seeding torch: SAM's prompt encoder draws a buffer (not a parameter) at construction."""
    torch.manual_seed(seed)
    return build()


MODELS = {
    "sam": lambda: seeded(tiny_sam),
    "hq_sam": lambda: seeded(lambda: tiny_sam("segment_anything_hq")),
    "sam2": lambda: seeded(tiny_sam2),
}
OTHER_PACKAGES = ["hf_sam_tiny", "hf_sam_hq_tiny", "hf_sam2_tiny", "hf_sam3_tiny", "sam3_tiny", "ultralytics_sam2_tiny"]
"""Harness models of the other families (transformers, SAM 3, Ultralytics) the search decodes with."""


def images(count: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Calibration images: generated shapes, their masks unused (the search needs no labels)."""
    data = SyntheticDataset(count=count, size=96, seed=seed)
    return [data[i].image for i in range(count)]


def flops_ratio(model: torch.nn.Module, schedule: dict, side: int) -> float:
    """The encoder's FLOPs under ``schedule`` over its dense FLOPs, counted here directly."""
    x = torch.randn(1, 3, side, side)
    dense = count_flops(model.image_encoder, x).total
    with tomeplug.patch(model, None, layers=schedule):
        return count_flops(model.image_encoder, x).total / dense


@pytest.mark.parametrize("family", MODELS)
def test_meets_the_flops_target_and_patches_as_returned(family):
    model = MODELS[family]()
    side = 128 if family == "sam2" else 256
    schedule, report = tune(model, images(), {"flops": 0.9}, r=[0.5])
    assert tomeplug.active_patch(model) is None  # left unpatched
    assert report.final.flops_ratio <= 0.9
    assert flops_ratio(model, schedule, side) == pytest.approx(report.final.flops_ratio, rel=1e-9)
    depth = len(tomeplug.get_registry().adapter_for(model).blocks(model))
    assert [row["block"] for row in report.rows] == list(range(depth))  # one candidate per block here
    assert f"mask IoU ({family} decoder" in report.fidelity and report.final.mask_iou is not None
    # the mapping form of tomeplug.patch takes the schedule as returned
    handle = tomeplug.patch(model, None, layers=schedule)
    assert {b: (s["strategy"], s["r"], s["scope"]) for b, s in handle.to_dict()["layers"].items()} == {
        b: ("tome", 0.5, "attn") for b in schedule
    }
    handle.remove()
    assert "## Per-block sensitivity" in report.to_markdown() and report.to_dict()["final"]["loss"] == report.final.loss


@pytest.mark.parametrize("name", OTHER_PACKAGES)
def test_every_harness_family_is_tuned_with_its_decoder(name):
    """transformers, SAM 3 and Ultralytics models: the schedule meets the target, fidelity includes their masks."""
    from tomeplug_eval.model_catalog import MODELS as CATALOG
    from tomeplug_eval.model_catalog import build_model

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        model = build_model(name)
    target = 0.999 if name == "sam3_tiny" else 0.95  # sam3's encoder is mostly its two FPN necks at tiny size
    schedule, report = tune(model, images(1), {"flops": target}, r=[0.5], boxes_per_side=1)
    assert report.final.flops_ratio <= target and schedule
    assert f"mask IoU ({CATALOG[name].family} decoder" in report.fidelity and report.final.mask_iou is not None
    assert tomeplug.active_patch(model) is None


def test_fidelity_matches_an_independent_computation():
    """The report's embedding cosine is what the encoder's outputs give, computed here without the probe."""
    model, calibration = seeded(tiny_sam), images(2)
    schedule, report = tune(model, calibration, "flops=0.9", r=[0.5], blocks=[0, 1])
    batch = [model.preprocess(torch.tensor(np.asarray(_resize(i))).permute(2, 0, 1)[None].float()) for i in calibration]
    with torch.no_grad():
        dense = torch.cat([model.image_encoder(x) for x in batch])
        with tomeplug.patch(model, None, layers=schedule):
            merged = torch.cat([model.image_encoder(x) for x in batch])
    assert report.final.emb_cos == pytest.approx(float(embedding_cosine(merged, dense).mean()), abs=1e-9)
    assert report.final.emb_cos < 1.0


def _resize(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(image, (256, 256), interpolation=cv2.INTER_LINEAR)


TARGETS = (0.97, 0.95, 0.92, 0.9, 0.87, 0.85, 0.82, 0.8, 0.77, 0.75)
GREEDY_BOUND = 1.5
"""Greedy's measured fidelity loss is at most this multiple of the exhaustive optimum's on every target.
Observed on tiny SAMs: equal on all 50 cases of seeds 0-4 x TARGETS; with the prompt encoder's buffer drawn
from an unseeded generator, up to 1.44x on some targets."""


@pytest.mark.parametrize("seed", [0, 3])
def test_greedy_is_close_to_exhaustive(tmp_path, seed):
    """Tiny SAM, 4 blocks x r in {0.25, 0.5}: 80 schedules, every one measured by the exhaustive search."""
    model, calibration = seeded(lambda: tiny_sam(seed=seed), seed), images(1)
    equal = 0
    for flops in TARGETS:
        greedy, g = tune(model, calibration, {"flops": flops}, cache_dir=tmp_path)
        best, e = tune(model, calibration, {"flops": flops}, search="exhaustive", cache_dir=tmp_path)
        assert g.final.flops_ratio <= flops and e.final.flops_ratio <= flops
        assert e.final.loss <= g.final.loss <= GREEDY_BOUND * e.final.loss, flops
        equal += greedy == best
        # the exhaustive optimum is the least loss of every measured schedule that meets the target
        measured = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
        assert len(measured) == 80
        assert e.final.loss == min(m["loss"] for m in measured if m["flops_ratio"] <= flops)
    assert equal >= 8


def test_speedup_target_stops_at_the_first_step_that_meets_it(monkeypatch):
    """A speed target is checked on the clock after each step (here a stand-in clock: 1 / FLOPs ratio)."""
    timed = []

    def fake_speedup(self, schedule, rounds=3):
        timed.append(sorted(schedule))
        return 1.0 / self.measure(schedule).flops_ratio

    monkeypatch.setattr(Measurer, "speedup", fake_speedup)
    schedule, report = tune(seeded(tiny_sam), images(1), {"speedup": 1.15}, r=[0.5])
    assert report.speedup == pytest.approx(1 / report.final.flops_ratio) and report.speedup >= 1.15
    greedy = [s for s in report.steps if s["change"].startswith(("add", "upgrade"))]
    assert all(s["speedup"] < 1.15 for s in greedy[:-1]) and greedy[-1]["speedup"] >= 1.15
    assert [sorted(map(int, s["blocks"].strip("[]").split(", "))) for s in greedy] == timed[: len(greedy)]
    assert report.target == {"speedup": 1.15}


def test_resumes_from_its_cache(tmp_path):
    model, calibration = seeded(tiny_sam), images(1)
    first, a = tune(model, calibration, "flops=0.85", cache_dir=tmp_path)
    second, b = tune(model, calibration, "flops=0.85", cache_dir=tmp_path)
    assert a.computed > 0 and b.computed == 0
    assert first == second and a.rows == b.rows and a.final == b.final


def test_any_adapter_embedding_cosine_only():
    encoder = tiny_sam_encoder()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    schedule, report = tune(encoder, x, "flops=0.9", r=[0.5])
    assert report.final.mask_iou is None and report.fidelity.startswith("embedding cosine only")
    assert report.final.flops_ratio <= 0.9 and 0 < report.final.loss < 1e-2
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) float tensor"):
        tune(encoder, images(1), "flops=0.9")


def test_validation_on_held_out_images_and_plot(tmp_path):
    schedule, report = tune(seeded(tiny_sam), images(1), "flops=0.9", r=[0.5], validation_images=images(2, seed=1))
    assert report.validation is not None and report.validation.flops_ratio == report.final.flops_ratio
    assert report.validation.emb_cos != report.final.emb_cos  # other images
    assert "held-out images" in report.to_markdown()
    path = report.plot(tmp_path / "tune.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_name_the_problem():
    model = seeded(tiny_sam)
    with pytest.raises(TargetUnreachableError, match="no schedule of the candidates meets the target"):
        tune(model, images(1), "flops=0.3", r=[0.25])
    with pytest.raises(ValueError, match="flops=FRACTION or speedup=FACTOR"):
        Target.parse("fast")
    with pytest.raises(ValueError, match="exactly one of"):
        Target(flops=0.5, speedup=2.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Target(flops=1.5)
    with pytest.raises(ValueError, match="0.5"):  # ToMe merges at most half: before anything is measured
        tune(model, images(1), "flops=0.9", r=[0.75])
    with pytest.raises(ValueError, match="flops target"):
        tune(model, images(1), "speedup=1.2", search="exhaustive")
    with tomeplug.patch(model, "tome", r=0.5), pytest.raises(ValueError, match="unpatched"):
        tune(model, images(1), "flops=0.9")


def test_module_is_callable_and_exposes_tune():
    assert tomeplug_eval.tune is tune and callable(tune) and tune.tune.__name__ == "tune"


def test_tomeplug_tune_is_the_search(monkeypatch):
    """``tomeplug.tune`` (the core's front door) runs the search; without the eval package it says what to install."""
    model = MODELS["sam"]()
    ours, report = tomeplug.tune(model, images(1), "flops=0.9", r=[0.5])
    theirs, _ = tune(model, images(1), "flops=0.9", r=[0.5])
    assert ours == theirs and report.final.flops_ratio <= 0.9
    monkeypatch.setitem(sys.modules, "tomeplug_eval.tune", None)
    with pytest.raises(ModuleNotFoundError, match=r"tomeplug.tune needs the evaluation package.*tomeplug\[eval\]"):
        tomeplug.tune(model, images(1))


# ---------------------------------------------------------------------------------------------------------
# Schedule files, the harness, the command line


def test_schedule_file_round_trip_and_errors(tmp_path):
    schedule = {3: {"strategy": "tome", "r": 0.5, "scope": "attn"}, 0: {"strategy": "pitome", "r": 0.25}}
    path = write_schedule(tmp_path / "s.json", schedule, target={"flops": 0.8})
    assert read_schedule(path) == dict(sorted(schedule.items()))
    with pytest.raises(ScheduleFileError, match=r"schedule file .*missing\.json not found"):
        read_schedule(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ScheduleFileError, match=r"bad\.json is not valid JSON"):
        read_schedule(tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text('{"layers": {"x": "tome"}}')
    with pytest.raises(ScheduleFileError, match=r"shape\.json: entry 'x'"):
        read_schedule(tmp_path / "shape.json")


def test_harness_runs_a_schedule_file(tmp_path):
    schedule = {1: {"strategy": "tome", "r": 0.5, "scope": "attn"}, 2: {"strategy": "pitome", "r": 0.25}}
    path = write_schedule(tmp_path / "schedule.json", schedule)
    record = run_harness(tmp_path / "out", "strategy=mix", f"layers=@{path}", "limit=1", "flops=false")
    layers = record["blocks"]["layers"]
    assert {int(b): (s["strategy"], s["r"]) for b, s in layers.items()} == {1: ("tome", 0.5), 2: ("pitome", 0.25)}
    with pytest.raises(ScheduleFileError, match=r"nowhere\.json not found"):
        run_harness(tmp_path / "out", "strategy=mix", f"layers=@{tmp_path / 'nowhere.json'}", "limit=1")


def test_command_line(tmp_path, capsys):
    out = tmp_path / "tuned" / "schedule.json"
    args = "--model sam_tiny --images synthetic --limit 1 --holdout 1 --target flops=0.9 --r 0.5 --no-progress".split()
    args += ["--out", str(out), "--plot", str(tmp_path / "p.png")]
    report = tomeplug_eval.tune.main(args)
    saved = json.loads(out.read_text())
    assert read_schedule(out) == report.schedule and saved["target"] == {"flops": 0.9}
    assert saved["model"] == "sam_tiny" and saved["weights"] == "random" and saved["validation"] is not None
    assert out.with_suffix(".md").read_text() == report.to_markdown()
    printed = capsys.readouterr()
    assert (tmp_path / "p.png").is_file() and f"layers=@{out}" in printed.out and "RANDOM WEIGHTS" in printed.err


def test_command_line_help():
    done = subprocess.run(
        [sys.executable, "-m", "tomeplug_eval.tune", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "--target" in done.stdout and "flops=FRACTION" in done.stdout
    assert "RuntimeWarning" not in done.stderr


def test_span_scope_is_counted_whole():
    """Span blocks keep tokens merged across blocks, so their FLOPs do not add up: the schedule is traced whole."""
    model = seeded(tiny_sam)
    schedule, report = tune(model, images(1), "flops=0.85", r=[0.25, 0.5], scopes=["span"])
    assert report.final.flops_ratio <= 0.85 and len(report.rows) == 4 * 2
    assert len(schedule) >= 2 and {s["scope"] for s in schedule.values()} == {"span"}
    assert flops_ratio(model, schedule, 256) == pytest.approx(report.final.flops_ratio, rel=1e-9)

"""Hand-checked choices of each built-in strategy, their parameter checks, and end-to-end runs on tiny SAM."""

from __future__ import annotations

import json
import math

import attrs
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_sam_encoder

import tomeplug
from tomeplug.cells import CellStrategyConfig, cell_destinations, cell_plan, num_cells
from tomeplug_strategies.energy import pitome_energy
from tomeplug_strategies.grad_tome import SOBEL_X, SOBEL_Y, GradToMeConfig, sobel_magnitude
from tomeplug_strategies.pitome import PiToMeConfig, PiToMeEnergy, PiToMeV1Config, PiToMeV2Config
from tomeplug_strategies.tomesd import ToMeSDConfig

BUILTINS = {"tome", "grad_tome", "pitome", "pitome_v1", "pitome_v2", "tomesd"}


def test_builtins_are_registered(registry):
    assert BUILTINS <= set(registry.strategies)
    assert registry.strategy("pitome_v2") is PiToMeV2Config


def test_configs_serialise(registry, strategy_name):
    record = registry.strategy(strategy_name)(r=0.25).to_dict()
    assert json.loads(json.dumps(record))["strategy"] == strategy_name


# --- references written the slow, obvious way ---------------------------------------------------------


def reference_cell_destinations(score: torch.Tensor, h: int, w: int) -> list[list[int]]:
    """Per group, per 2x2 cell in row-major order: the first token of the cell with the highest score."""
    result = []
    for group in score.tolist():
        picks = []
        for top in range(0, h, 2):
            for left in range(0, w, 2):
                cell = [y * w + x for y in range(top, min(top + 2, h)) for x in range(left, min(left + 2, w))]
                picks.append(max(cell, key=lambda t: (group[t], -t)))
        result.append(picks)
    return result


@pytest.mark.parametrize("grid", [(1, 1), (1, 6), (3, 5), (4, 4), (7, 7), (6, 3)])
def test_cell_destinations_match_a_loop(grid):
    h, w = grid
    score = torch.randn(3, h * w, generator=torch.Generator().manual_seed(h * 10 + w))
    dst = cell_destinations(score, grid)
    assert dst.shape == (3, num_cells(grid))
    assert dst.tolist() == reference_cell_destinations(score, h, w)
    # ties go to the top-left token of each cell
    assert cell_destinations(torch.zeros(1, h * w), grid).tolist() == reference_cell_destinations(
        torch.zeros(1, h * w), h, w
    )


def test_energy_matches_the_formula():
    metric = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(0))
    metric[1, 4:] = 0  # padded tokens: cosine 0 with everything
    margin, alpha = 0.3, 0.7

    def f(s: float) -> float:
        return s if s >= 0 else alpha * (math.exp(s) - 1)

    for b in range(2):
        for i in range(6):
            cos = [float(F.cosine_similarity(metric[b, i], metric[b, j], dim=0)) for j in range(6)]
            expected = sum(f(c - margin) for c in cos) / 6
            assert pitome_energy(metric, margin, alpha)[b, i].item() == pytest.approx(expected, abs=1e-5)
    assert torch.isfinite(pitome_energy(torch.zeros(1, 4, 3), 0.5, 1.0)).all()


# --- grad-ToMe -----------------------------------------------------------------------------------------


def test_sobel_kernels_are_correct():
    assert SOBEL_X == ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1))
    assert SOBEL_Y == ((-1, -2, -1), (0, 0, 0), (1, 2, 1))  # not the published [-1, -2, 1] first row


def reference_sobel(metric: torch.Tensor, h: int, w: int, padding: str) -> list[list[float]]:
    """Per group, per token: sqrt(sum over channels of gx^2 + gy^2), pixel by pixel. Outside the grid a
    pixel reads 0 (``"zeros"``) or its nearest border pixel (``"replicate"``)."""

    def pixel(image: list[float], y: int, x: int) -> float:
        if padding == "replicate":
            y, x = min(max(y, 0), h - 1), min(max(x, 0), w - 1)
        return image[y * w + x] if 0 <= y < h and 0 <= x < w else 0.0

    result = []
    for group in metric.double().tolist():
        channels = [[token[c] for token in group] for c in range(len(group[0]))]
        magnitudes = []
        for y in range(h):
            for x in range(w):
                total = 0.0
                for image in channels:
                    window = [[pixel(image, y + dy, x + dx) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)]
                    gx = sum(SOBEL_X[i][j] * window[i][j] for i in range(3) for j in range(3))
                    gy = sum(SOBEL_Y[i][j] * window[i][j] for i in range(3) for j in range(3))
                    total += gx * gx + gy * gy
                magnitudes.append(math.sqrt(total))
        result.append(magnitudes)
    return result


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
@pytest.mark.parametrize("grid", [(1, 1), (1, 6), (3, 5), (4, 4), (7, 7)])
def test_grad_tome_matches_a_pixel_loop(padding, grid):
    """Magnitudes and destinations of either padding equal the loop's; zeros is the default."""
    h, w = grid
    metric = torch.randn(2, h * w, 3, generator=torch.Generator().manual_seed(h * 10 + w))
    expected = reference_sobel(metric, h, w, padding)
    torch.testing.assert_close(sobel_magnitude(metric, grid, padding), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    config = GradToMeConfig(r=0.25) if padding == "zeros" else GradToMeConfig(r=0.25, padding="replicate")
    dst = cell_destinations(config.destination_score(metric, grid), grid)
    assert dst.tolist() == reference_cell_destinations(-torch.tensor(expected), h, w)
    plan = config.plan(metric, grid)
    for kept, picks in zip(plan.kept.tolist(), dst.tolist(), strict=True):
        assert set(picks) <= set(kept), "every destination is kept"


def test_grad_tome_paddings_differ_at_the_border():
    """A constant metric: zero padding makes the border an edge, so each cell of a 4x4 grid keeps its
    token nearest the centre (the published method's choice); replicate padding leaves it flat everywhere,
    so ties go to each cell's top-left token."""
    metric = torch.ones(1, 16, 2)
    for config, expected in (
        (GradToMeConfig(r=0.5), [5, 6, 9, 10]),
        (GradToMeConfig(r=0.5, padding="replicate"), [0, 2, 8, 10]),
    ):
        assert cell_destinations(config.destination_score(metric, (4, 4)), (4, 4)).tolist() == [expected]
    zeros = sobel_magnitude(metric, (4, 4)).reshape(4, 4)
    assert zeros[1:3, 1:3].eq(0).all() and zeros[0, 0] == pytest.approx(3 * math.sqrt(2) * math.sqrt(2))
    assert zeros[0, 1] == pytest.approx(4 * math.sqrt(2))  # gy = 4 on each of the 2 channels
    assert (sobel_magnitude(metric, (4, 4), "replicate") == 0).all()


def test_grad_tome_padding_is_validated():
    with pytest.raises(ValueError, match="padding='reflect'.*'zeros', 'replicate'"):
        GradToMeConfig(r=0.5, padding="reflect")
    with pytest.raises(ValueError, match="zeros, replicate"):
        sobel_magnitude(torch.ones(1, 4, 1), (2, 2), "same")


@pytest.mark.parametrize("axis", ["x", "y"])
def test_sobel_magnitude_of_a_ramp(axis):
    """A unit ramp has gradient 8 inside and 4 at the replicate-padded ends; across it, exactly 0."""
    h, w = 5, 6
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ramp = (cols if axis == "x" else rows).float()
    metric = torch.stack([ramp, 2 * ramp], dim=-1).reshape(1, h * w, 2)  # two channels: L2 over them
    magnitude = sobel_magnitude(metric, (h, w), "replicate").reshape(h, w)
    length = w if axis == "x" else h
    along = torch.full((length,), 8.0)
    along[0] = along[-1] = 4.0
    expected = (along.expand(h, w) if axis == "x" else along.unsqueeze(1).expand(h, w)) * math.sqrt(5)
    torch.testing.assert_close(magnitude, expected)
    assert (sobel_magnitude(torch.ones(2, 12, 3), (3, 4), "replicate") == 0).all()  # flat, edges included
    assert torch.isfinite(sobel_magnitude(torch.zeros(1, 9, 2), (3, 3))).all()


def test_grad_tome_picks_the_flattest_token_of_each_cell():
    # replicate padding: on these 2-row grids every token is on the border, and zero padding would make the
    # border, not the step, decide (test_grad_tome_paddings_differ_at_the_border)
    config = GradToMeConfig(r=0.5, padding="replicate")
    # a vertical step between columns 1 and 2: columns 0 and 3 are flat, columns 1 and 2 are on the edge
    step = torch.tensor([0.0, 0.0, 1.0, 1.0])
    horizontal = torch.stack([step.expand(2, 4), torch.ones(2, 4)], dim=-1).reshape(1, 8, 2)  # 2x4 grid
    assert cell_destinations(config.destination_score(horizontal, (2, 4)), (2, 4)).tolist() == [[0, 3]]
    # the same step across rows of a 4x2 grid: rows 0 and 3 are flat
    vertical = torch.stack([step.unsqueeze(1).expand(4, 2), torch.ones(4, 2)], dim=-1).reshape(1, 8, 2)
    assert cell_destinations(config.destination_score(vertical, (4, 2)), (4, 2)).tolist() == [[0, 6]]
    plan = config.plan(horizontal, (2, 4))
    assert {0, 3} <= set(plan.kept[0].tolist())
    assert set(plan.kept[plan.size > 1].tolist()) <= {0, 3}, "only destinations receive merges"


# --- PiToMe ----------------------------------------------------------------------------------------------


def clustered_metric(cluster: list[int], n: int = 16) -> torch.Tensor:
    """(1, n, n): tokens in ``cluster`` share one direction (high energy); every other token is unique."""
    metric = torch.eye(n)
    metric[cluster] = metric[cluster[0]].clone()
    return metric.unsqueeze(0)


def test_pitome_v1_picks_the_highest_energy_token_of_each_cell():
    # 4x4 grid; one cluster token per cell, at a different offset in each cell
    cluster = [0, 3, 12, 15]  # top-left of cell (0, 0), top-right of (0, 1), bottom-left of (1, 0), ...
    metric = clustered_metric(cluster)
    config = PiToMeV1Config(r=0.5)
    assert cell_destinations(config.energy(metric), (4, 4)).tolist() == [cluster]
    plan = config.plan(metric, (4, 4))
    assert set(cluster) <= set(plan.kept[0].tolist())
    assert set(plan.kept[plan.size > 1].tolist()) <= set(cluster), "only destinations receive merges"


def test_pitome_v2_protects_the_lowest_energy_tokens():
    generator = torch.Generator().manual_seed(0)
    for grid in [(4, 4), (5, 3), (7, 7)]:
        n = grid[0] * grid[1]
        metric = torch.randn(2, n, 4, generator=generator)
        config = PiToMeV2Config(r=0.25)
        energy = config.energy(metric)
        plan = config.plan(metric, grid)
        dst = cell_destinations(energy, grid)
        for b in range(2):
            rest = sorted(set(range(n)) - set(dst[b].tolist()), key=lambda t: -energy[b, t].item())
            n_merge = config.num_to_merge(n)
            merged, protected = rest[:n_merge], rest[n_merge:]
            kept = plan.kept[b].tolist()
            assert not set(merged) & set(kept), "the highest-energy non-destinations all merge"
            for t in protected:
                assert t in kept and plan.size[b, kept.index(t)] == 1, f"protected token {t} was merged"


def test_pitome_v0_protects_low_energy_tokens_below_half():
    # 12 tokens of one cluster (high energy) and 4 unique ones (low energy); r = 0.25 merges 4 of 16
    cluster = [t for t in range(16) if t not in (2, 5, 8, 13)]
    metric = clustered_metric(cluster)
    plan = PiToMeConfig(r=0.25).plan(metric, (4, 4))
    assert plan.num_merged == 12
    kept = plan.kept[0].tolist()
    for t in (2, 5, 8, 13):
        assert t in kept and plan.size[0, kept.index(t)] == 1

    # random tokens: exactly the N - 2 * n_merge lowest-energy tokens are protected
    metric = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(1))
    config = PiToMeConfig(r=0.2)
    plan = config.plan(metric, (4, 5))
    order = config.energy(metric).argsort(dim=1, descending=True)
    n_merge = config.num_to_merge(20)
    for b in range(3):
        kept = plan.kept[b].tolist()
        for t in order[b, 2 * n_merge :].tolist():
            assert t in kept and plan.size[b, kept.index(t)] == 1
        sources, destinations = order[b, 0 : 2 * n_merge : 2].tolist(), order[b, 1 : 2 * n_merge : 2].tolist()
        assert not set(sources) & set(kept), "every v0 source merges"
        assert set(plan.kept[b][plan.size[b] > 1].tolist()) <= set(destinations)


def test_pitome_family_shares_its_energy_and_the_cell_machinery():
    assert all(issubclass(c, PiToMeEnergy) for c in (PiToMeConfig, PiToMeV1Config, PiToMeV2Config))
    assert issubclass(PiToMeV1Config, CellStrategyConfig) and issubclass(PiToMeV2Config, PiToMeV1Config)
    assert [f.name for f in attrs.fields(PiToMeV2Config)] == [f.name for f in attrs.fields(PiToMeConfig)]
    metric = torch.randn(3, 25, 8, generator=torch.Generator().manual_seed(1))
    energy = PiToMeConfig(r=0.4).energy(metric)
    for config, src_score in ((PiToMeV1Config(r=0.4), None), (PiToMeV2Config(r=0.4), energy)):
        reference = cell_plan(metric, (5, 5), 10, energy, src_score)  # the cell machinery, by hand
        plan = config.plan(metric, (5, 5))
        assert torch.equal(plan.assignment, reference.assignment) and torch.equal(plan.kept, reference.kept)


# --- ToMeSD ----------------------------------------------------------------------------------------------


def test_tomesd_is_deterministic_per_seed_and_differs_across_seeds():
    metric = torch.randn(3, 36, 4, generator=torch.Generator().manual_seed(0))
    grid = (6, 6)

    def destinations(config: ToMeSDConfig) -> torch.Tensor:
        return cell_destinations(config.destination_score(metric, grid), grid)

    seed0 = destinations(ToMeSDConfig(seed=0))
    assert torch.equal(seed0, destinations(ToMeSDConfig(seed=0)))
    assert torch.equal(seed0, seed0[:1].expand_as(seed0)), "one draw shared by the groups of a call"
    assert not torch.equal(seed0, destinations(ToMeSDConfig(seed=1)))
    plans = [ToMeSDConfig(r=0.5, seed=s).plan(metric, grid) for s in (0, 0, 1)]
    assert torch.equal(plans[0].assignment, plans[1].assignment)
    assert not torch.equal(plans[0].assignment, plans[2].assignment)


def test_tomesd_fixed_picks_the_top_left_of_each_cell():
    metric = torch.randn(2, 15, 4)
    config = ToMeSDConfig(random=False)
    assert cell_destinations(config.destination_score(metric, (3, 5)), (3, 5)).tolist() == [[0, 2, 4, 10, 12, 14]] * 2


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "params", "error", "match"),
    [
        (PiToMeConfig, {"margin": 1.5}, ValueError, r"margin=1.5 .* \[-1.0, 1.0\]"),
        (PiToMeV1Config, {"margin": float("nan")}, ValueError, "margin"),
        (PiToMeV2Config, {"margin": "0.5"}, TypeError, "margin must be a real number"),
        (PiToMeConfig, {"alpha": 0.0}, ValueError, r"alpha=0.0 .* \(0.0, inf\)"),
        (PiToMeConfig, {"alpha": float("inf")}, ValueError, "alpha"),
        (PiToMeConfig, {"alpha": True}, TypeError, "alpha"),
        (ToMeSDConfig, {"seed": -1}, ValueError, "seed=-1"),
        (ToMeSDConfig, {"seed": 1.0}, TypeError, "seed must be an int"),
        (ToMeSDConfig, {"random": 1}, TypeError, "random"),
        (GradToMeConfig, {"r": 0.6}, ValueError, "one destination per 2x2 cell"),
    ],
)
def test_invalid_parameters_raise(cls, params, error, match):
    with pytest.raises(error, match=match):
        cls(**params)


def test_too_few_sources_for_the_grid_raise_at_plan_time():
    @attrs.frozen(kw_only=True)
    class Greedy(GradToMeConfig):  # claims more than cells allow on some grids
        name = "greedy"
        max_r = 0.75

    config = Greedy(r=0.7)
    config.plan(torch.randn(1, 16, 2), (4, 4))  # 4 cells: 12 tokens can merge, 11 do
    with pytest.raises(ValueError, match=r"cannot merge 2 of 3 tokens on a 1x3 grid.*2 cells.*lower r"):
        config.plan(torch.randn(1, 3, 2), (1, 3))


# --- end to end on a tiny official SAM encoder -------------------------------------------------------------


def record_qkv_inputs(encoder) -> list[list[torch.Size]]:
    """Hook every block's qkv linear; returns the per-block list of its input shapes."""
    shapes: list[list[torch.Size]] = [[] for _ in encoder.blocks]
    for index, block in enumerate(encoder.blocks):
        block.attn.qkv.register_forward_hook(lambda module, args, out, i=index: shapes[i].append(args[0].shape))
    return shapes


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def test_each_strategy_runs_in_sam(strategy_name, image):
    encoder = tiny_sam_encoder()
    shapes = record_qkv_inputs(encoder)
    with torch.no_grad():
        reference = encoder(image)
        with tomeplug.patch(encoder, strategy_name, r=0.3):
            out = encoder(image)
        restored = encoder(image)
    assert out.shape == reference.shape == (1, 32, 16, 16) and torch.isfinite(out).all()
    assert not torch.equal(out, reference) and torch.equal(restored, reference)
    # windowed blocks: 16 windows of 5x5 (the edge ones zero-padded), 25 - floor(7.5) = 18 tokens
    # global blocks: 16x16 = 256 tokens, 256 - floor(76.8) = 180
    assert [s[1] for s in shapes] == [(16, 18, 64), (1, 180, 64), (16, 18, 64), (1, 180, 64)]


def test_mixed_schedule_in_sam(image):
    encoder = tiny_sam_encoder()
    shapes = record_qkv_inputs(encoder)
    schedule = {0: "tome", 1: "pitome", 2: "grad_tome", 3: PiToMeV2Config(r=0.25)}
    handle = tomeplug.patch(encoder, layers=schedule)
    assert [type(s.strategy).__name__ for s in handle.schedule.values()] == [
        "ToMeConfig",
        "PiToMeConfig",
        "GradToMeConfig",
        "PiToMeV2Config",
    ]
    with torch.no_grad():
        out = encoder(image)
    assert out.shape == (1, 32, 16, 16) and torch.isfinite(out).all()
    # r = 0.5 by default: 25 - 12 = 13 per window, 256 - 128 = 128 globally; block 3 at r = 0.25: 256 - 64
    assert [s[0] for s in shapes] == [(16, 13, 64), (1, 128, 64), (16, 13, 64), (1, 192, 64)]
    handle.remove()

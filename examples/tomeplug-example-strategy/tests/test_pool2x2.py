"""pool2x2 passes tomeplug's conformance check and pools the most uniform 2x2 cells first."""

import torch
from tomeplug_example_strategy.pool2x2 import Pool2x2Config

from tomeplug.testing import check_strategy


def test_conforms():
    check_strategy(Pool2x2Config)


def test_uniform_cell_is_pooled_into_its_top_left_token():
    metric = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))  # a 4x4 grid
    metric[:, [10, 11, 14, 15]] = metric[:, 10:11]  # the bottom-right cell is uniform
    plan = Pool2x2Config(r=3 / 16).plan(metric, (4, 4))  # floor(r * N) = 3: one whole cell
    assert plan.size.max() == 4
    assert (plan.assignment[:, [11, 14, 15]] == plan.assignment[:, [10]]).all()
    assert (plan.kept.gather(1, plan.assignment[:, [10]]) == 10).all()

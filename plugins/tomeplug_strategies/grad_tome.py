"""grad-ToMe: per 2x2 cell, the flattest token (lowest Sobel gradient of the metric) is the destination."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from tomeplug.cells import CellStrategyConfig
from tomeplug_strategies.params import one_of

# The correct Sobel kernels. The published grad-ToMe code has [-1, -2, 1] as sobel_y's first row, a sign
# error that makes a constant image look like an edge; tomeplug uses [-1, -2, -1].
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
PADDINGS = ("zeros", "replicate")


def sobel_magnitude(metric: Tensor, grid: tuple[int, int], padding: str = "zeros") -> Tensor:
    """Image-gradient magnitude of the metric over the (h, w) grid: sqrt(sum_c gx_c^2 + gy_c^2).

    Every channel of the metric is an h x w image; both Sobel kernels run over each channel (a depthwise
    cross-correlation, as ``conv2d`` computes it). The magnitude is the L2 norm over channels of each
    channel's sqrt(gx^2 + gy^2).

    Padding at the grid's border: ``"zeros"`` (the default) is the published grad-ToMe's
    (``conv2d(..., padding=1)``): the grid's border reads as an edge against the zeros outside, so border
    tokens are rarely destinations. ``"replicate"`` repeats the border, so a constant image has zero
    gradient at its edges too. Both use the sign-corrected ``SOBEL_Y``.

    Args:
        metric: (B', N, C) similarity features, N = h * w in row-major order.
        grid: (h, w).
        padding: ``"zeros"`` or ``"replicate"``.
    Returns:
        (B', N) float32 magnitudes.
    """
    b, n, c = metric.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"grid {h}x{w} does not hold the {n} tokens of each group")
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r} is not a Sobel padding; choose one of {', '.join(PADDINGS)}")
    images = metric.float().transpose(1, 2).reshape(b * c, 1, h, w)
    if padding == "replicate":
        images = F.pad(images, (1, 1, 1, 1), mode="replicate")  # (B' * C, 1, h + 2, w + 2)
    kernels = torch.tensor((SOBEL_X, SOBEL_Y), device=metric.device).unsqueeze(1)  # (2, 1, 3, 3)
    grads = F.conv2d(images, kernels, padding=1 if padding == "zeros" else 0)  # (B' * C, 2, h, w): gx, gy
    return grads.reshape(b, c * 2, n).square().sum(dim=1).sqrt()


@attrs.frozen(kw_only=True)
class GradToMeConfig(CellStrategyConfig):
    """grad-ToMe: the lowest-gradient token of each 2x2 cell is a destination; the rest match onto them.

    Args:
        padding: how the Sobel filter pads the grid's border: ``"zeros"`` (the published method's) or
            ``"replicate"`` (see :func:`sobel_magnitude`).
    """

    name = "grad_tome"

    padding: str = attrs.field(
        default="zeros", validator=one_of(PADDINGS, "how the Sobel filter pads the grid's border")
    )

    def destination_score(self, metric: Tensor, grid: tuple[int, int], similarity: Tensor | None = None) -> Tensor:
        """(B', N) per-token score, the highest in each cell wins: minus the Sobel gradient magnitude."""
        return -sobel_magnitude(metric, grid, self.padding)

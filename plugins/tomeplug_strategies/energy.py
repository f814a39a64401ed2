"""PiToMe's energy score (Tran et al., NeurIPS 2024): how redundant each token is among its group."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pitome_energy(metric: Tensor, margin: float, alpha: float) -> Tensor:
    """E_i = mean_j f(cos(x_i, x_j) - margin), f(s) = s for s >= 0 and alpha * (exp(s) - 1) below (ELU).

    High energy: a token close to many others (redundant, safe to merge); low energy: an isolated,
    informative token. The mean runs over all j, i itself included. Zero vectors (SAM's padded window
    tokens) have cosine 0 with everything (``F.normalize`` maps them to zero), never NaN.

    Args:
        metric: (B', N, C) similarity features.
        margin: m, the cosine similarity above which a pair counts as redundant.
        alpha: the ELU's scale for pairs below the margin.
    Returns:
        (B', N) float32 energies.
    """
    x = F.normalize(metric.float(), dim=-1)
    sim = x @ x.transpose(1, 2)  # (B', N, N) cosine similarities
    return F.elu(sim - margin, alpha=alpha).mean(dim=-1)

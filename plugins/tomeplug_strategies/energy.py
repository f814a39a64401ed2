"""PiToMe's energy score (Tran et al., NeurIPS 2024): how redundant each token is among its group."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tomeplug.matching import cosine_similarity


def pitome_energy(metric: Tensor, margin: float, alpha: float, similarity: Tensor | None = None) -> Tensor:
    """E_i = mean_j f(cos(x_i, x_j) - margin), f(s) = s for s >= 0 and alpha * (exp(s) - 1) below (ELU).

    High energy: a token close to many others (redundant, safe to merge); low energy: an isolated,
    informative token. The mean runs over all j, i itself included. Zero vectors (SAM's padded window
    tokens) have cosine 0 with everything, never NaN.

    Args:
        metric: (B', N, C) similarity features.
        margin: m, the cosine similarity above which a pair counts as redundant.
        alpha: the ELU's scale for pairs below the margin.
        similarity: the (B', N, N) float32 cosine similarities of ``metric``, if already computed.
    Returns:
        (B', N) float32 energies.
    """
    sim = cosine_similarity(metric.float()) if similarity is None else similarity  # (B', N, N)
    return F.elu(sim - margin, alpha=alpha).mean(dim=-1)

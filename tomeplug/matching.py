"""Merge helpers shared by strategies: bipartite soft matching onto chosen destination tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tomeplug.plan import MergePlan


def alternate_split(n: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """ToMe's split of n tokens: even positions are sources (A), odd positions destinations (B)."""
    return torch.arange(0, n, 2, device=device), torch.arange(1, n, 2, device=device)


def pick(x: Tensor, index: Tensor) -> Tensor:
    """The tokens ``index`` ((K,) shared by every group, or (B', K)) of ``x`` (B', N, C): (B', K, C)."""
    if index.dim() == 1:
        return x.index_select(1, index)  # several times faster than a gather with an expanded index
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def cosine_similarity(metric: Tensor) -> Tensor:
    """(B', N, N) cosine similarities between the tokens of ``metric`` (B', N, C); a zero vector (SAM's
    and Hiera's window padding) has similarity 0 with everything, never NaN."""
    x = F.normalize(metric, dim=-1)
    return x @ x.transpose(1, 2)


def bipartite_plan(
    metric: Tensor,
    src: Tensor,
    dst: Tensor,
    n_merge: int,
    protected: Tensor | None = None,
    valid: Tensor | None = None,
    similarity: Tensor | None = None,
) -> MergePlan:
    """Merge the ``n_merge`` sources most similar to their best destination into it.

    Every source candidate's best destination is found by cosine similarity of the metric; the
    ``n_merge`` candidates with the highest best-similarity are merged, the rest kept.

    Args:
        metric: (B', N, C) similarity features.
        src: (B', Ns) or (Ns,) token indices of the source candidates.
        dst: (B', Nd) or (Nd,) token indices of the destinations.
        n_merge: how many sources to merge, at most Ns.
        protected: (B', Np) or (Np,) token indices kept as they are; ``src``, ``dst`` and ``protected``
            partition the N tokens.
        valid: (B', N) bool or None. Given, padding (False) and real tokens never match each other, and
            padding sources merge into padding destinations before any real pair (a lossless merge).
        similarity: (B', N, N) :func:`cosine_similarity` of the metric where the caller has it already
            (PiToMe's energy needs it): the scores are read from it instead of computed again.
    """
    b, n, _ = metric.shape
    if not 0 <= n_merge <= src.shape[-1]:
        raise ValueError(f"cannot merge {n_merge} of {src.shape[-1]} source tokens")
    if similarity is None:
        metric = F.normalize(metric, dim=-1)
        scores = pick(metric, src) @ pick(metric, dst).transpose(1, 2)  # (B', Ns, Nd)
    else:
        scores = pick(pick(similarity, src).transpose(1, 2), dst).transpose(1, 2)  # rows src, columns dst
    src, dst = src.expand(b, -1), dst.expand(b, -1)
    if valid is not None:
        real_src = valid.gather(1, src).unsqueeze(2)  # (B', Ns, 1)
        same_kind = real_src == valid.gather(1, dst).unsqueeze(1)  # (B', Ns, Nd)
        scores = scores.masked_fill(~same_kind, float("-inf")).masked_fill(same_kind & ~real_src, float("inf"))
    best_score, best_dst = scores.max(dim=-1)  # (B', Ns)
    order = best_score.argsort(dim=-1, descending=True, stable=True)
    merged, unmerged = order[:, :n_merge], order[:, n_merge:]
    parts = [src.gather(1, unmerged), dst]
    if protected is not None:
        parts.insert(0, protected.expand(b, -1))
    kept = torch.cat(parts, dim=1)  # (B', M)
    m = kept.shape[1]
    assignment = torch.empty(b, n, dtype=torch.long, device=metric.device)
    assignment.scatter_(1, kept, torch.arange(m, device=metric.device).expand(b, m))
    dst_offset = m - dst.shape[1]
    assignment.scatter_(1, src.gather(1, merged), best_dst.gather(1, merged) + dst_offset)
    return MergePlan.from_assignment(assignment, kept)

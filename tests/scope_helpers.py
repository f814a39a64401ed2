"""Helpers shared by the merge-scope tests (SAM ViT, Hiera): a no-op strategy, module layouts, MLP inputs."""

from __future__ import annotations

import attrs
import torch

from tomeplug.config import StrategyConfig
from tomeplug.plan import MergePlan


@attrs.frozen(kw_only=True)
class IdentityConfig(StrategyConfig):
    """A strategy that merges nothing whatever r is: the merging path must then reproduce upstream."""

    name = "identity"
    max_r = 0.9

    def plan(self, metric, grid, valid=None):
        return MergePlan.identity(metric.shape[0], metric.shape[1], metric.device)


def module_layout(model):
    """Every module's class and attribute names: unpatching must restore both."""
    return [(type(m), sorted(m.__dict__)) for m in model.modules()]


def record_mlp_inputs(blocks):
    """{block index: shape of its MLP's input}, filled by the next forward."""
    seen = {}
    for index, block in enumerate(blocks):
        block.mlp.register_forward_hook(lambda m, args, out, i=index: seen.__setitem__(i, tuple(args[0].shape)))
    return seen


def encode(encoder, x):
    """The encoder's output for ``x`` without gradients (HQ-SAM's first output)."""
    with torch.no_grad():
        out = encoder(x)
    return out[0] if isinstance(out, tuple) else out

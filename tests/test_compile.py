"""torch.compile(fullgraph=True) of patched SAM ViT encoders and SAM 2 Hiera trunks: no graph break in the merging path.

``fullgraph=True`` makes any graph break an error, whatever the backend: ``aot_eager`` traces and
functionalises the whole forward (what inductor would compile) in seconds. Inductor itself takes
minutes on this CPU (~100 s for the three scopes), so its end-to-end check is marked ``slow``.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import deep_encoder, tiny_hiera

import tomeplug

SCOPES = ["attn", "block", "span"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled_matches_eager(encoder, backend, x):
    with torch.no_grad():
        expected = encoder(x)
        compiled = torch.compile(encoder, fullgraph=True, backend=backend, dynamic=False)
        torch.testing.assert_close(compiled(x), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(compiled(x), expected, atol=1e-4, rtol=1e-4)  # same shapes: no recompile


@pytest.mark.parametrize(
    "package, scope", [("segment_anything", scope) for scope in SCOPES] + [("segment_anything_hq", "span")]
)
def test_fullgraph_compile_matches_eager(package, scope):
    encoder = deep_encoder(package)
    tomeplug.patch(encoder, "tome", r=0.5, scope=scope, prop_attn=True, exclude_padding=True)
    compiled_matches_eager(encoder, "aot_eager", torch.randn(1, 3, 256, 256))


@pytest.mark.parametrize("scope", SCOPES)
def test_hiera_fullgraph_compile_matches_eager(scope):
    """In float64: aot_eager's decompositions move fp32 results by ~1e-6, enough to flip a near-tie of the
    matching in this tiny random trunk (one token merged elsewhere changes the output by ~1e-2)."""
    trunk = tiny_hiera().double()
    tomeplug.patch(trunk, "tome", r=0.5, scope=scope, prop_attn=True, exclude_padding=True)
    compiled_matches_eager(trunk, "aot_eager", torch.randn(1, 3, 128, 128, dtype=torch.float64))


def test_every_strategy_compiles_without_graph_breaks(strategy_name):
    """Every strategy's plan() in the span path (the attn and block paths call it the same way)."""
    encoder = deep_encoder()
    tomeplug.patch(encoder, strategy_name, r=0.25, scope="span")
    compiled_matches_eager(encoder, "eager", torch.randn(1, 3, 256, 256))


@pytest.mark.slow
@pytest.mark.parametrize("scope", SCOPES)
def test_inductor_compile_matches_eager(scope):
    encoder = deep_encoder()
    tomeplug.patch(encoder, "tome", r=0.5, scope=scope)
    compiled_matches_eager(encoder, "inductor", torch.randn(1, 3, 256, 256))

"""torch.compile(fullgraph=True) of patched encoders: no graph break in the merging path, no recompilation.

``fullgraph=True`` makes any graph break an error, whatever the backend: ``aot_eager`` traces and
functionalises the whole forward (what inductor would compile) in seconds. Every built-in adapter's tiny
model is compiled once and called on two inputs of one size (a plan baked into the graph as constants, or a
guard on data, would give a wrong second output or a recompilation). Inductor itself takes minutes on this
CPU (~100 s for the three scopes of SAM ViT, ~140 s for SAM 3's span), so its end-to-end checks are
marked ``slow``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import builtin_registry
from tiny_models import TINY_MODELS, deep_encoder, tiny_hiera
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils._pytree import tree_leaves

import tomeplug

SCOPES = ["attn", "block", "span"]
SPAN_ONLY = {"hq_sam_vit", "hf_sam_hq_vit", "hf_sam2_hiera"}
"""Adapters checked in span scope alone: the first two share their merging code with sam_vit / hf_sam_vit, the
last takes ~10 s per scope to trace here."""
ADAPTER_SCOPES = [
    (adapter, scope)
    for adapter, entry in sorted(builtin_registry().adapters.items())
    for scope in entry.obj.scopes
    if scope == "span" or adapter not in SPAN_ONLY
]


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


@pytest.mark.parametrize(("adapter", "scope"), ADAPTER_SCOPES)
def test_every_adapter_compiles_once_and_matches_eager(adapter, scope):
    """One graph for two inputs of one size (``error_on_recompile``), every output equal to eager's."""
    spec = TINY_MODELS[adapter]
    model = spec.build()
    run = spec.runner() or (lambda module, x: module(x))  # memory attention: called with a memory
    tomeplug.patch(model, "tome", r=0.5, scope=scope)
    counter = CompileCounterWithBackend("eager")  # runs the captured graph: a baked-in plan shows as a wrong output
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    second = torch.randn(spec.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for x in (spec.make_input(), second):
            expected, got = tree_leaves(run(model, x)), tree_leaves(run(compiled, x))
            assert expected
            for out, ref in zip(got, expected, strict=True):
                torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert counter.frame_count == 1


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


# SAM 3 under inductor (complex RoPE products): tests/test_adapter_sam3.py, every scope, -m slow

"""Exact savings of the merging path (SAM ViT, the strategies): each is proven output-identical or counted here."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scope_helpers import encode
from tiny_models import deep_encoder
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import tomeplug
from tomeplug.matching import bipartite_plan, cosine_similarity
from tomeplug.metric import plan_merge
from tomeplug_adapters import sam_vit_scopes
from tomeplug_adapters.sam_vit_attention import (
    attend,
    gather_bits,
    merged_attention,
    plan_positions,
    position_bias,
    rel_pos_bias,
)

SCOPES = ["attn", "block", "span"]
LAYOUT_OPS = {"view", "_unsafe_view", "clone"}  # reshape copies or views by the input's strides (batch 1 or not)
MATMULS = {torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul, torch.bmm, torch.Tensor.bmm, torch.mm}


class AtenOps(TorchDispatchMode):
    """Counts the aten ops a region runs, by name (``gather``, ``_softmax``...), and their outputs' sizes."""

    def __init__(self):
        super().__init__()
        self.counts, self.sizes = Counter(), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        if isinstance(out, torch.Tensor):
            self.sizes.setdefault(name, []).append(out.numel())
        return out


def tome_plan(attn, tokens, grid, r=0.5):
    setting = tomeplug.Setting(strategy=tomeplug.get_registry().strategy("tome")(r=r))
    return plan_merge(setting, tokens, attn.qkv, attn.num_heads, grid)


@pytest.mark.parametrize("block_index", [0, 2])  # windowed, global
def test_projection_before_unmerge_equals_projection_after(block_index):
    attn = deep_encoder().blocks[block_index].attn
    side = 5 if block_index == 0 else 16
    tokens = torch.randn(3, side * side, 64, generator=torch.Generator().manual_seed(0))
    plan = tome_plan(attn, tokens, (side, side))
    rows = []
    hook = attn.proj.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    with torch.no_grad():
        ours = merged_attention(attn, tokens, plan, (side, side), prop_attn=True)
        hook.remove()
        proj, attn.proj = attn.proj, nn.Identity()
        before_proj = attend(attn, plan.merge(tokens), plan_positions(plan, (side, side), True, tokens.dtype))
        attn.proj = proj
        reference = proj(plan.unmerge(before_proj))  # the textbook order: unmerge, then project every token
    assert rows == [plan.num_merged] and plan.num_merged < side * side  # the projection ran on M rows, not N
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("scope, calls", [("attn", 6), ("block", 6), ("span", 4)])
def test_one_similarity_matmul_per_attention_call(monkeypatch, registry, strategy_name, scope, calls):
    """Every strategy plans once per attention call (span: once per run), all windows batched, with one
    similarity matmul (PiToMe's energy and its matching share theirs)."""
    config_class, per_plan = registry.strategy(strategy_name), []
    original = config_class.plan

    class CountMatmuls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            per_plan[-1] += func in MATMULS
            return func(*args, **(kwargs or {}))

    def plan(self, metric, grid, valid=None):
        per_plan.append(0)
        with CountMatmuls():
            return original(self, metric, grid, valid)

    monkeypatch.setattr(config_class, "plan", plan)
    encoder = deep_encoder()
    tomeplug.patch(encoder, strategy_name, r=0.4, scope=scope)
    encode(encoder, torch.randn(2, 3, 256, 256))
    assert per_plan == [1] * calls


@pytest.mark.parametrize("shared", [True, False])  # sources / destinations shared by every group, or per group
@pytest.mark.parametrize("padding", [False, True])
def test_shared_similarity_gives_the_same_plan(shared, padding):
    generator = torch.Generator().manual_seed(5)
    metric = torch.randn(6, 20, 8, generator=generator)
    valid = None
    if padding:
        valid = torch.rand(6, 20, generator=generator) > 0.3
        metric = metric * valid.unsqueeze(-1)  # padding tokens are zero vectors
    order = torch.arange(20) if shared else torch.rand(6, 20, generator=generator).argsort(dim=1)
    src, dst, protected = order[..., :8], order[..., 8:16], order[..., 16:]
    plans = [
        bipartite_plan(metric, src, dst, 5, protected=protected, valid=valid, similarity=similarity)
        for similarity in (None, cosine_similarity(metric))
    ]
    assert all(torch.equal(getattr(plans[0], f), getattr(plans[1], f)) for f in ("assignment", "kept", "size"))


def forward_ops(encoder, x):
    with AtenOps() as ops, torch.no_grad():
        encoder(x)
    return ops


@pytest.mark.parametrize("scope", SCOPES)
def test_no_python_loop_over_windows_or_tokens(scope, strategy_name):
    """The same ops run whatever the number of windows, tokens and images: the work is batched."""
    counts = []
    for img_size, batch in ((256, 1), (384, 2)):  # 16 vs 50 windows, 256 vs 576 tokens per global call
        encoder = deep_encoder(img_size=img_size)
        tomeplug.patch(encoder, strategy_name, r=0.4, scope=scope)
        ops = forward_ops(encoder, torch.randn(batch, 3, img_size, img_size)).counts
        counts.append({name: n for name, n in ops.items() if name not in LAYOUT_OPS})
    assert counts[0] == counts[1]


def naive_rel_pos_bias(attn, q, kept, grid):
    """Upstream's decomposed bias over the whole grid for queries placed at their kept cells, then indexed."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    b, heads, m, hd = q.shape
    n = grid[0] * grid[1]
    out = torch.empty(b, heads, m, m)
    for i in range(b):
        for head in range(heads):
            full_q = q.new_zeros(1, n, hd).index_copy_(1, kept[i], q[i, head][None])
            full = add_decomposed_rel_pos(q.new_zeros(1, n, n), full_q, attn.rel_pos_h, attn.rel_pos_w, grid, grid)
            out[i, head] = full[0][kept[i]][:, kept[i]]
    return out


def rel_pos_case(block_index):
    """A tiny encoder block's attention (0: windowed 5 x 5, 2: global 16 x 16), its grid and a ToMe plan over it."""
    attn = deep_encoder().blocks[block_index].attn
    side = 5 if block_index == 0 else 16
    grid, tokens = (side, side), torch.randn(2, side * side, 64, generator=torch.Generator().manual_seed(2))
    return attn, grid, tome_plan(attn, tokens, grid)


@pytest.mark.parametrize("block_index", [0, 2])
def test_rel_pos_bias_gathers_from_small_terms_and_is_exact(block_index):
    attn, grid, plan = rel_pos_case(block_index)
    (b, m), side = plan.kept.shape, grid[0]
    q = torch.randn(b, 4, m, 16)
    with torch.no_grad(), AtenOps() as ops:
        bias = rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, plan.kept, grid)
    # one gather of the per-query terms (B', heads, M, h + w), then the key rows' from them, then the key
    # columns' a head at a time (added in place: no second (B', heads, M, M) tensor)
    assert ops.sizes["gather"] == [b * 4 * m * (2 * side), b * 4 * m * m] + [b * m * m] * 4
    with torch.no_grad():
        torch.testing.assert_close(bias, naive_rel_pos_bias(attn, q, plan.kept, grid), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("block_index", [0, 2])
def test_compiled_rel_pos_bias_is_one_sum_not_a_loop_over_heads(block_index):
    # Under torch.compile the bias is one expression: inductor turned the eager form's in-place per-head slice adds
    # into a conditional nested as deep as the heads, evaluated per element (bf16 ViT-L: 4x slower than eager)
    attn, grid, plan = rel_pos_case(block_index)
    q = torch.randn(plan.kept.shape[0], 4, plan.kept.shape[1], 16, generator=torch.Generator().manual_seed(3))
    graphs = []

    def capture(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    for prop_attn in (False, True):
        positions = plan_positions(plan, grid, prop_attn, q.dtype)
        rel_pos = (attn.rel_pos_h, attn.rel_pos_w)
        with torch.no_grad():
            compiled = torch.compile(position_bias, backend=capture, fullgraph=True)(q, positions, rel_pos)
            torch.testing.assert_close(compiled, position_bias(q, positions, rel_pos), atol=1e-6, rtol=1e-6)
        adds = [node for node in graphs[-1].graph.nodes if getattr(node.target, "__name__", "") in ("add", "add_")]
        assert len(adds) == 1 + prop_attn  # rows + columns (+ log size), whatever the number of heads
    torch._dynamo.reset()


@pytest.mark.parametrize("scope, builds", [("block", 6), ("span", 4)])
def test_positions_built_once_per_plan(monkeypatch, scope, builds):
    built = []
    original = sam_vit_scopes.plan_positions
    monkeypatch.setattr(sam_vit_scopes, "plan_positions", lambda *args: built.append(1) or original(*args))
    encoder = deep_encoder()
    tomeplug.patch(encoder, "tome", r=0.4, scope=scope)
    encode(encoder, torch.randn(1, 3, 256, 256))
    assert len(built) == builds


@pytest.mark.parametrize("scope", SCOPES)
def test_attention_runs_as_one_sdpa_call_with_additive_mask(scope):
    encoder = deep_encoder()
    tomeplug.patch(encoder, "tome", r=0.4, scope=scope, prop_attn=True)
    ops = forward_ops(encoder, torch.randn(1, 3, 256, 256))
    sdpa = sum(n for name, n in ops.counts.items() if "scaled_dot_product" in name and not name.startswith("_fused"))
    assert sdpa >= 6 and not any("softmax" in name for name in ops.counts)  # no hand-written softmax attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_gather_bits_is_gather(dtype):
    terms = torch.randn(3, 4, 10, 7, generator=torch.Generator().manual_seed(6)).to(dtype)
    index = torch.randint(0, 7, (3, 1, 1, 10), generator=torch.Generator().manual_seed(7)).expand(3, 4, 10, 10)
    assert torch.equal(gather_bits(terms, index), terms.gather(-1, index))
    assert gather_bits(terms, index).dtype == dtype

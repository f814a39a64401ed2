"""Encoder FLOPs with fvcore, extended to the ops fvcore skips that matter (notably SDPA).

Convention (as fvcore, and the published SAM / ToMe / PiToMe numbers): one multiply-add is one flop,
and "GFLOPs" means 1e9 of them. Only matmul-class ops (linear, matmul, bmm, einsum, convolution,
attention), fvcore's norm and upsampling handles and complex products (RoPE's rotation of queries and keys,
SAM 3; 4 real multiplies each, listed as ``complex_mul``) are counted; real elementwise ops (softmax, gelu,
add, mean, ...) are not, in either the merged or the unmerged model.

Three lists come with the total, so that nothing is dropped silently:

- ``overhead``: data-movement and selection ops (gather, scatter, index, sort, topk, max, norm). In a
  merging model these are the merge's own cost: planning, merge and unmerge. They are counted as the
  elements of the largest tensor each op reads or writes (times log2 n for sorts), a proxy for memory
  traffic, and kept out of the GFLOPs total.
- ``uncounted``: the other ops nobody counts, with their number of calls.
- A matmul-class op without a handle is an error (:class:`UncountedFlopsError`), never a silent zero.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import attrs
import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

# matmul-class ops by name token; cdist has no handle, so it is an error if a counted model runs it
_MATMUL_TOKENS = set("mm bmm addmm baddbmm addbmm addmv mv dot vdot matmul linear einsum cdist".split())
_MATMUL_PATTERN = re.compile(r"conv(?!ert)|scaled_dot_product|attention|bilinear|tensordot")
SORT_OPS = ("sort", "argsort", "topk", "msort")
OVERHEAD_OPS = SORT_OPS + (
    "gather", "scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_",
    "index", "index_select", "index_add", "index_add_", "index_put", "index_put_", "take_along_dim",
    "max", "min", "argmax", "argmin", "linalg_vector_norm", "norm",
)  # fmt: skip
SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_cudnn_attention",  # CUDA's pick for bf16 on recent GPUs (H100, H200)
)


class UncountedFlopsError(RuntimeError):
    """A matmul-class or attention op ran without a FLOP handle: the count would be wrong."""


def is_matmul_class(op: str) -> bool:
    """Whether an op name (``aten::bmm``, ``bmm``) is a matmul, convolution or attention op."""
    base = op.split("::")[-1].strip("_")
    return bool(set(base.split("_")) & _MATMUL_TOKENS) or bool(_MATMUL_PATTERN.search(base))


def check_counted(uncounted_ops: Iterable[str]) -> None:
    """Raise :class:`UncountedFlopsError` naming every matmul-class op among ``uncounted_ops``."""
    missing = sorted({op for op in uncounted_ops if is_matmul_class(op)})
    if missing:
        raise UncountedFlopsError(
            f"no FLOP handle for matmul-class op(s) {', '.join(missing)}: the count would silently miss their "
            "work. Add a handle in tomeplug_eval.flops (FLOP_HANDLES) or pass one in extra_handles."
        )


def _shape(value: Any, op: str) -> list[int]:
    shape = get_shape(value)
    if shape is None:
        raise UncountedFlopsError(f"{op}: an input's shape is unknown in the trace; cannot count its FLOPs")
    return list(shape)


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``scaled_dot_product_attention``: batch * heads * L * S * (E + Ev) multiply-adds.

    q @ k^T costs L * S * E, softmax(.) @ v costs L * S * Ev per batch and head (q: (..., L, E),
    k: (..., S, E), v: (..., S, Ev)). An additive ``attn_mask`` adds L * S adds, the scale and the
    softmax are elementwise: all uncounted, like their explicit counterparts in fvcore.
    """
    q, k, v = (_shape(x, "scaled_dot_product_attention") for x in inputs[:3])
    *batch, length, embed = q
    return math.prod(batch) * length * k[-2] * (embed + v[-1])


def matmul_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``matmul`` with broadcasting: output elements * the contracted size (fvcore's undercounts a broadcast rhs)."""
    a = _shape(inputs[0], "matmul")
    return math.prod(_shape(outputs[0], "matmul")) * a[-1]


def baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``baddbmm(input, b1, b2)``: the batched product's multiply-adds; the add is elementwise."""
    b, n, k = _shape(inputs[1], "baddbmm")
    return b * n * k * _shape(inputs[2], "baddbmm")[-1]


def complex_mul_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``mul``: 4 real multiplies per element of a complex product (RoPE's rotation); 0 for real products,
    which stay elementwise and uncounted (the two adds of a complex product ride on its multiplies)."""
    out = outputs[0].type()
    if not isinstance(out, torch._C.TensorType) or not str(out.scalarType()).startswith("Complex"):
        return 0
    return 4 * math.prod(_shape(outputs[0], "mul"))


def overhead_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Elements of the largest tensor an op reads or writes (a memory-traffic proxy)."""
    shapes = [get_shape(x) for x in [*inputs, *outputs] if isinstance(x.type(), torch._C.TensorType)]
    return max((math.prod(s) for s in shapes if s is not None), default=0)


def sort_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Sorts: elements * ceil(log2 n) comparisons, n the size of the last dimension (the usual sort axis)."""
    shape = get_shape(inputs[0]) or [1]
    return math.prod(shape) * max(1, math.ceil(math.log2(max(shape[-1], 2))))


FLOP_HANDLES = {
    **dict.fromkeys(SDPA_OPS, sdpa_flop_jit),
    "aten::matmul": matmul_flop_jit,
    "aten::baddbmm": baddbmm_flop_jit,
    "aten::mul": complex_mul_jit,
}
OVERHEAD_HANDLES = {f"aten::{op}": sort_jit if op in SORT_OPS else overhead_jit for op in OVERHEAD_OPS}


@attrs.frozen
class FlopReport:
    """FLOPs of one forward (multiply-adds), split into counted compute, merge overhead and the uncounted.

    Attributes:
        total: multiply-adds of the counted ops (the published "FLOPs").
        by_operator: the total by op name (``linear``, ``matmul``, ``scaled_dot_product_attention``...).
        overhead: element counts of data-movement/selection ops by op name; not in ``total``.
        uncounted: calls of the remaining ops without a handle (elementwise), by ``aten::`` name.
    """

    total: int
    by_operator: dict[str, int]
    overhead: dict[str, int]
    uncounted: dict[str, int]

    @property
    def gflops(self) -> float:
        """``total`` in units of 1e9."""
        return self.total / 1e9

    @property
    def overhead_g(self) -> float:
        """The overhead ops' element count in units of 1e9."""
        return sum(self.overhead.values()) / 1e9

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record."""
        return {"gflops": self.gflops, "overhead_g": self.overhead_g, **attrs.asdict(self)}


def count_flops(
    module: nn.Module, inputs: torch.Tensor | tuple[Any, ...], extra_handles: dict[str, Any] | None = None
) -> FlopReport:
    """Trace one forward of ``module`` on ``inputs`` (no grad) and count its FLOPs.

    Args:
        module: the model, e.g. a (patched) image encoder.
        inputs: a tensor or a tuple of positional inputs.
        extra_handles: more fvcore handles by ``aten::`` op name; they override the built-in ones.
    Raises:
        UncountedFlopsError: a matmul-class op had no handle.
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle(**{**OVERHEAD_HANDLES, **FLOP_HANDLES, **(extra_handles or {})})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        counts = Counter(analysis.by_operator())
    uncounted = dict(sorted(analysis.unsupported_ops().items()))
    check_counted(uncounted)
    overhead = {op: int(counts.pop(op)) for op in sorted(set(counts) & set(OVERHEAD_OPS))}
    if counts.get("mul"):
        counts["complex_mul"] = counts["mul"]
    counts.pop("mul", None)  # real products are elementwise: counted 0, not listed
    by_operator = {op: int(n) for op, n in sorted(counts.items())}
    return FlopReport(sum(by_operator.values()), by_operator, overhead, uncounted)

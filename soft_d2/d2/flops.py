"""fvcore / Detectron2 FLOP handles for SOFT's operators.

fvcore counts FLOPs from a jit trace, operator by operator; it knows GEMMs and convolutions but not
SOFT's attention, which it would report as "unsupported operator" and count as zero. This module
gives every operator of SOFT's trace a handle, keyed by the name the trace shows:

- the compiled engine's custom operators ``soft_d2::gaussian_kernel``, ``soft_d2::kernel_matmul``,
  ``soft_d2::kernel_t_matmul`` (operands [batch*heads, rows, features]);
- the pure-PyTorch path: ``aten::baddbmm`` (the distance GEMM of the dense kernel), the streamed
  products (``torch.autograd.Function``\\ s, ``prim::PythonOp._StreamedKernel[T]Matmul``);
- the Newton solve and inverse (``prim::PythonOp._NewtonSolve`` / ``_NewtonInverse``, and
  ``soft_d2::newton_solve`` should the solve become a custom operator);
- stage 4's ``aten::scaled_dot_product_attention``;
- the elementwise operators of the attention (exp, squares, sums, GELU) and the landmark grid's
  size arithmetic: not counted.

Convention: fvcore's, one multiply-add = 1 flop (MACs); elementwise work is not counted. With m
landmarks, N tokens, head dim d (and e columns on the right, e = d in the model), per matrix:

    G(a, b), a: N x d, b: m x d             N m d           (the distance GEMM; exp not counted)
    G(a, b) @ w, G(a, b)^T @ v              N m d + N m e   (G formed inside, then the product)

The dense torch path forms G(Q, L) once for both products (one baddbmm + two bmm, counted by
those), the compiled engine and the streamed torch path form it in each product: their counts
differ by N m d, as their work does.

The Newton solve V_n rhs (soft_d2.ops.newton, n = max_iter iterations, rhs m x e) counts the path
that runs, so the count depends on the device, as the work does:

- ``"squaring"`` (the CUDA default): W_0 = P (alpha P), n - 1 squarings, n + 1 thin products:
  max(n, 1) m^3 + (n + 1) m^2 e, exactly the GEMMs it runs.
- ``"eigh"`` (the CPU default): one symmetric eigendecomposition, then U diag(f) U^T rhs
  (2 m^2 e). The eigendecomposition is LAPACK's, not GEMMs; it is counted as the textbook
  operation count of ``syevd`` (what torch.linalg.eigh calls on a CPU): tridiagonal reduction
  4/3 m^3 flops, divide and conquer at most 4/3 m^3 (less when eigenvalues deflate), back-
  transformation 2 m^3; 14/3 m^3 flops = 7/3 m^3 multiply-adds. An estimate, an upper one for the
  divide-and-conquer step. SOFT-Norm's ``"halving"`` numerics add one m^3 product (P (alpha P))
  on this path too.

The closed-form backward of both is not traced (fvcore counts forward passes).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

import fvcore.nn
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn.jit_handles import Handle, generic_activation_jit, get_shape

# 14/3 m^3 flops (see the module docstring) in multiply-adds.
EIGH_MACS_PER_M3 = 7 / 3


def _shapes(inputs: list, count: int) -> list[list[int]]:
    shapes = [get_shape(v) for v in inputs[:count]]
    if any(s is None for s in shapes):
        raise ValueError(f"FLOP handle: an operand has no complete shape in the trace ({shapes}); "
                         "trace the model with real (not symbolic) inputs")
    return shapes


def _settings(inputs: list, outputs: list, first: int, count: int) -> list[Any]:
    """The non-tensor arguments of an op: an autograd.Function (prim::PythonOp) keeps them on its
    node as scalar arguments; a custom operator takes them as constant inputs from ``first`` on."""
    node = outputs[0].node()
    if node.kind() == "prim::PythonOp":
        values = list(node.scalar_args())
    else:
        values = [v.toIValue() for v in inputs[first:first + count]]
    if len(values) < count or any(v is None for v in values[:count]):
        raise ValueError(f"FLOP handle for {node.kind()}: expected {count} constant settings, got {values}")
    return values[:count]


def gaussian_kernel_flops(inputs: list, outputs: list) -> Counter:
    """G(a, b) of [..., Na, d] x [..., Nb, d]: the distance GEMM, Na Nb d per matrix."""
    a, b = _shapes(inputs, 2)
    return Counter({"gaussian_kernel": math.prod(a[:-1]) * b[-2] * a[-1]})


def _kernel_product(name: str) -> Handle:
    """G(a, b) @ w or G(a, b)^T @ v, a: [..., N, d], b: [..., m, d], third operand [..., ., e]:
    G formed (N m d) and multiplied (N m e), per matrix."""

    def handle(inputs: list, outputs: list) -> Counter:
        a, b, x = _shapes(inputs, 3)
        return Counter({name: math.prod(a[:-1]) * b[-2] * (a[-1] + x[-1])})

    return handle


def newton_solve_macs(m: int, e: int, max_iter: int, numerics: str, solver: str) -> int:
    """Multiply-adds of one m x m solve against an m x e right-hand side (module docstring)."""
    if solver == "squaring":
        return max(max_iter, 1) * m**3 + (max_iter + 1) * m * m * e
    if solver == "eigh":
        halving = m**3 if numerics == "halving" else 0
        return round(EIGH_MACS_PER_M3 * m**3) + halving + 2 * m * m * e
    raise ValueError(f"FLOP handle: unknown Newton solver {solver!r} (expected 'squaring' or 'eigh')")


def newton_solve_flops(inputs: list, outputs: list) -> Counter:
    """V_n rhs, a: [B, h, m, m], rhs: [B, h, m, e]; settings (max_iter, numerics, solver)."""
    a, rhs = _shapes(inputs, 2)
    max_iter, numerics, solver = _settings(inputs, outputs, 2, 3)
    if solver == "auto":  # as soft_d2.ops.newton_solve resolves it
        device = inputs[0].type().device()
        solver = "squaring" if device is not None and device.type == "cuda" else "eigh"
    macs = newton_solve_macs(a[-1], rhs[-1], int(max_iter), numerics, solver)
    return Counter({"newton_solve": math.prod(a[:-2]) * macs})


def newton_inverse_flops(inputs: list, outputs: list) -> Counter:
    """The released order, V <- 2V - (V P) V: W_0 (m^3), then two m^3 products per iteration."""
    (a,) = _shapes(inputs, 1)
    (max_iter,) = _settings(inputs, outputs, 1, 1)
    return Counter({"newton_inverse": math.prod(a[:-2]) * a[-1] ** 3 * (1 + 2 * int(max_iter))})


def baddbmm_flops(inputs: list, outputs: list) -> int:
    """beta * self + alpha * batch1 @ batch2: the bmm's b n k e (the addition is elementwise)."""
    _, b1, b2 = _shapes(inputs, 3)
    return b1[0] * b1[1] * b1[2] * b2[2]


def sdpa_flops(inputs: list, outputs: list) -> Counter:
    """softmax(q k^T) v for q: [..., L, E], k: [..., S, E], v: [..., S, Ev]: L S (E + Ev) per batch
    and head, masks and causality ignored (the softmax is elementwise)."""
    q, k, v = _shapes(inputs, 3)
    return Counter({"scaled_dot_product_attention": math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])})


# op name in the jit trace -> handle. One line per op: a new operator (or a new name of one) is one entry.
SOFT_FLOP_HANDLES: dict[str, Handle] = {
    "soft_d2::gaussian_kernel": gaussian_kernel_flops,
    "soft_d2::kernel_matmul": _kernel_product("kernel_matmul"),
    "soft_d2::kernel_t_matmul": _kernel_product("kernel_t_matmul"),
    "prim::PythonOp._StreamedKernelMatmul": _kernel_product("kernel_matmul"),
    "prim::PythonOp._StreamedKernelTMatmul": _kernel_product("kernel_t_matmul"),
    "prim::PythonOp._NewtonSolve": newton_solve_flops,
    "soft_d2::newton_solve": newton_solve_flops,
    "prim::PythonOp._NewtonInverse": newton_inverse_flops,
    "aten::baddbmm": baddbmm_flops,
    "aten::scaled_dot_product_attention": sdpa_flops,
}

# Elementwise and reduction ops of SOFT's trace (Gaussian kernel, SOFT-Norm's D, GELU), the landmark grid's
# size arithmetic on traced scalar sizes (minimum, maximum, where) and UperNet's dropout (identity in eval):
# not counted, like the elementwise ops Detectron2's FlopCountAnalysis skips.
UNCOUNTED_OPS = ("aten::exp_", "aten::exp", "aten::square", "aten::sum", "aten::gelu", "aten::abs", "aten::amax",
                 "aten::minimum", "aten::maximum", "aten::where", "aten::feature_dropout")


def add_soft_flop_handles(analysis: fvcore.nn.JitModelAnalysis) -> fvcore.nn.JitModelAnalysis:
    """Give ``analysis`` (an fvcore FlopCountAnalysis) SOFT's handles; returns it."""
    return analysis.set_op_handle(**SOFT_FLOP_HANDLES, **{name: None for name in UNCOUNTED_OPS})


def soft_flop_count_analysis(model: Any, inputs: Any) -> FlopCountAnalysis:
    """Detectron2's FlopCountAnalysis (any model and input structure: detectors' list[dict], a
    tensor) with SOFT's handles."""
    return add_soft_flop_handles(FlopCountAnalysis(model, inputs))


def soft_activation_handles() -> dict[str, Handle]:
    """For fvcore's activation count (``supported_ops=``): each SOFT op's output elements;
    the elementwise ones produce none worth counting, as in Detectron2's convention."""
    handles = {name: generic_activation_jit() for name in SOFT_FLOP_HANDLES}
    handles.update({name: (lambda inputs, outputs: Counter()) for name in UNCOUNTED_OPS})
    return handles

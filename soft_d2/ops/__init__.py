"""Python face of SOFT's attention op: Gaussian-kernel products and the Newton inverse.

``kernel_method`` picks the implementation of the Gaussian-kernel products:
``"compiled"`` (the csrc extension soft_d2._C; an error if it is not built), ``"torch"`` (pure
PyTorch) or ``"auto"`` (compiled when built, else torch with one warning). All paths compute the
same function, in float32 (float64 for float64 inputs):

- compiled: streamed over row tiles in the forward and the backward (memory O(tile x m + outputs));
  on CUDA builds the forwards are fused kernels that never write G to memory.
- torch: the dense formula for small problems (bit-for-bit the model's reference path); above
  ``STREAM_ELEMENTS`` elements of G the same streamed algorithm in PyTorch ops.

``tile_rows`` forces the row tile (tests); ``check_finite=True`` rejects inf/NaN inputs (see
checks.py for what they do otherwise).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .checks import check_finite as _check_finite
from .checks import check_operands
from .compiled import (
    gaussian_kernel_compiled,
    gaussian_kernel_matmul_compiled,
    gaussian_kernel_t_matmul_compiled,
)
from .extension import compiled_module, load_error, warn_fallback_once
from .gaussian import (
    gaussian_kernel_matmul_torch,
    gaussian_kernel_t_matmul_torch,
    batched_matmul,
    gaussian_kernel_torch,
    upcast,
)
from .newton import NEWTON_NUMERICS, NEWTON_SOLVERS, newton_inverse, newton_solve
from .streamed_torch import (
    STREAM_ELEMENTS,
    gaussian_kernel_matmul_streamed,
    gaussian_kernel_t_matmul_streamed,
    should_stream,
)

KERNEL_METHODS = ("auto", "compiled", "torch")

__all__ = [
    "KERNEL_METHODS",
    "NEWTON_NUMERICS",
    "NEWTON_SOLVERS",
    "STREAM_ELEMENTS",
    "backend_summary",
    "check_kernel_method",
    "compiled_available",
    "gaussian_kernel",
    "gaussian_kernel_matmul",
    "gaussian_kernel_t_matmul",
    "newton_inverse",
    "newton_solve",
    "nystrom_attention",
]


def compiled_available() -> bool:
    return compiled_module() is not None


def check_kernel_method(method: str) -> str:
    """Validate ``method`` and resolve it to the implementation that runs: "compiled" or "torch"."""
    if method not in KERNEL_METHODS:
        raise ValueError(f"kernel_method must be one of {KERNEL_METHODS}, got {method!r}")
    if method == "torch":
        return "torch"
    if compiled_available():
        return "compiled"
    if method == "compiled":
        raise RuntimeError(
            "kernel_method='compiled' was asked for, but the compiled soft_d2._C extension is not "
            f"available ({load_error()}). Build it with `bash tools/install.sh` (or `pip install "
            "--no-build-isolation -e .`), or use kernel_method='torch' / 'auto'."
        )
    warn_fallback_once()
    return "torch"


def _prepare(op: str, method: str, check_finite: bool, a: Tensor, b: Tensor, other=None) -> str:
    check_operands(op, a, b, other)
    if check_finite:
        extra = {other[0]: other[1]} if other is not None else {}
        _check_finite(op, a=a, b=b, **extra)
    return check_kernel_method(method)


def gaussian_kernel(
    a: Tensor, b: Tensor, kernel_method: str = "auto", *, tile_rows: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    """Dense G(a, b)[i, j] = exp(-||a_i - b_j||^2 / 2) over [..., N, d] inputs, float32 (or float64) out."""
    impl = _prepare("gaussian_kernel", kernel_method, check_finite, a, b)
    # The model's m x m landmark kernel is tiny: there the compiled op's tile loop (above all its
    # backward) costs ~30 ms per call against ~1 ms for the torch formula, so compiled is used only
    # where the tiling can pay off: a given tile size or a G above STREAM_ELEMENTS.
    if impl == "compiled" and (tile_rows or should_stream(a, b)):
        return gaussian_kernel_compiled(a, b, tile_rows or 0)
    return gaussian_kernel_torch(a, b)


def gaussian_kernel_matmul(
    a: Tensor, b: Tensor, w: Tensor, kernel_method: str = "auto", *, tile_rows: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    """G(a, b) @ w: [..., N, d], [..., m, d], [..., m, e] -> [..., N, e], float32 (or float64) out."""
    impl = _prepare("gaussian_kernel_matmul", kernel_method, check_finite, a, b, ("w", w, "b"))
    if impl == "compiled":
        return gaussian_kernel_matmul_compiled(a, b, w, tile_rows or 0)
    if tile_rows or should_stream(a, b):
        return gaussian_kernel_matmul_streamed(a, b, w, tile_rows)
    return gaussian_kernel_matmul_torch(a, b, w)


def gaussian_kernel_t_matmul(
    a: Tensor, b: Tensor, v: Tensor, kernel_method: str = "auto", *, tile_rows: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    """G(a, b)^T @ v: [..., N, d], [..., m, d], [..., N, e] -> [..., m, e], float32 (or float64) out."""
    impl = _prepare("gaussian_kernel_t_matmul", kernel_method, check_finite, a, b, ("v", v, "a"))
    if impl == "compiled":
        return gaussian_kernel_t_matmul_compiled(a, b, v, tile_rows or 0)
    if tile_rows or should_stream(a, b):
        return gaussian_kernel_t_matmul_streamed(a, b, v, tile_rows)
    return gaussian_kernel_t_matmul_torch(a, b, v)


def nystrom_attention(
    q: Tensor,
    landmarks: Tensor,
    v: Tensor,
    middle: Callable[[Tensor], Tensor],
    kernel_method: str = "auto",
    *,
    tile_rows: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    """G(q, L) @ middle(G(q, L)^T @ v): SOFT's low-rank attention, float32 (or float64) out.

    Evaluated right to left, so the cost is O(N m d) and nothing N x m x m is formed; ``middle``
    maps the [..., m, e] landmark summary to [..., m, e] (the approximate inverse of G(L, L),
    with SOFT-Norm's scaling). Above ``STREAM_ELEMENTS`` elements of G (or with ``tile_rows``)
    both paths make two streamed passes (G is recomputed, never stored); below it G(q, L) is
    formed once by the dense torch formula and used for both products.
    """
    impl = _prepare("nystrom_attention", kernel_method, check_finite, q, landmarks, ("v", v, "a"))
    with torch.autocast(q.device.type, enabled=False):
        streamed = bool(tile_rows) or should_stream(q, landmarks)
        if impl == "compiled" and streamed:
            summary = gaussian_kernel_t_matmul_compiled(q, landmarks, v, tile_rows or 0)
            return gaussian_kernel_matmul_compiled(q, landmarks, middle(summary), tile_rows or 0)
        if streamed:
            summary = gaussian_kernel_t_matmul_streamed(q, landmarks, v, tile_rows)
            return gaussian_kernel_matmul_streamed(q, landmarks, middle(summary), tile_rows)
        # Small G (at most STREAM_ELEMENTS): formed once, by one GEMM and one exp, for both
        # products; the compiled op's tiling pays off only where G is too large to keep.
        k1 = gaussian_kernel_torch(q, landmarks)
        summary = batched_matmul(k1.transpose(-1, -2), upcast(v)[0])
        return batched_matmul(k1, middle(summary))


def backend_summary() -> str:
    if not compiled_available():
        return f"gaussian-kernel op: pure PyTorch (compiled extension not available: {load_error()})"
    cuda = "CPU + CUDA" if compiled_module().built_with_cuda() else "CPU only"
    return f"gaussian-kernel op: compiled soft_d2._C ({cuda}), pure-PyTorch fallback available"

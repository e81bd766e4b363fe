"""Python face of SOFT's attention op: Gaussian-kernel products and the Newton inverse.

``kernel_method`` picks the implementation of the Gaussian-kernel products:
``"torch"`` (pure PyTorch), ``"compiled"`` (the csrc extension, an error if it is not built) or
``"auto"`` (compiled when built, else torch). All paths compute the same function.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .gaussian import (
    upcast,
    gaussian_kernel_matmul_torch,
    gaussian_kernel_t_matmul_torch,
    gaussian_kernel_torch,
)
from .newton import NEWTON_NUMERICS, newton_inverse, newton_solve

KERNEL_METHODS = ("auto", "compiled", "torch")

__all__ = [
    "KERNEL_METHODS",
    "NEWTON_NUMERICS",
    "backend_summary",
    "check_kernel_method",
    "gaussian_kernel",
    "gaussian_kernel_matmul",
    "gaussian_kernel_t_matmul",
    "newton_inverse",
    "newton_solve",
    "nystrom_attention",
]


def check_kernel_method(method: str) -> str:
    if method not in KERNEL_METHODS:
        raise ValueError(f"kernel_method must be one of {KERNEL_METHODS}, got {method!r}")
    if method == "compiled":
        raise RuntimeError(
            "kernel_method='compiled' was asked for, but the compiled soft_d2._C extension is not "
            "built. Build it with `bash tools/install.sh` (or `pip install -e . "
            "--no-build-isolation`), or use kernel_method='torch' / 'auto'."
        )
    return "torch"


def gaussian_kernel(a: Tensor, b: Tensor, kernel_method: str = "auto") -> Tensor:
    """Dense G(a, b)[i, j] = exp(-||a_i - b_j||^2 / 2) over [..., N, d] inputs, float32 (or float64) out."""
    check_kernel_method(kernel_method)
    return gaussian_kernel_torch(a, b)


def gaussian_kernel_matmul(a: Tensor, b: Tensor, w: Tensor, kernel_method: str = "auto") -> Tensor:
    """G(a, b) @ w, float32 (or float64) out."""
    check_kernel_method(kernel_method)
    return gaussian_kernel_matmul_torch(a, b, w)


def gaussian_kernel_t_matmul(a: Tensor, b: Tensor, v: Tensor, kernel_method: str = "auto") -> Tensor:
    """G(a, b)^T @ v, float32 (or float64) out."""
    check_kernel_method(kernel_method)
    return gaussian_kernel_t_matmul_torch(a, b, v)


def nystrom_attention(
    q: Tensor,
    landmarks: Tensor,
    v: Tensor,
    middle: Callable[[Tensor], Tensor],
    kernel_method: str = "auto",
) -> Tensor:
    """G(q, L) @ middle(G(q, L)^T @ v): SOFT's low-rank attention, float32 (or float64) out.

    Evaluated right to left, so the cost is O(N m d) and nothing N x m x m is formed; ``middle``
    maps the [..., m, e] landmark summary to [..., m, e] (the approximate inverse of G(L, L),
    with SOFT-Norm's scaling). The torch path forms G(q, L) once and uses it for both products.
    """
    check_kernel_method(kernel_method)
    with torch.autocast(q.device.type, enabled=False):
        k1 = gaussian_kernel_torch(q, landmarks)
        summary = torch.matmul(k1.transpose(-1, -2), upcast(v)[0])
        return torch.matmul(k1, middle(summary))


def backend_summary() -> str:
    return "gaussian-kernel op: pure PyTorch (compiled extension not built)"

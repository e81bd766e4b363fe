"""Gaussian-kernel primitives of SOFT attention, pure-PyTorch path.

    G(a, b)[i, j] = exp(-||a_i - b_j||^2 / 2)

All functions take [..., N, d] tensors (the model uses [B, heads, N, d]) and compute in at least
float32 (the squared distance cancels badly in half precision; float64 stays float64); results
are returned in that precision so the caller decides where to round.
"""
from __future__ import annotations

import torch
from torch import Tensor


def upcast(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Half precision -> float32; float32 and float64 unchanged."""
    return tuple(t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors)


def batched_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for [..., n, k] x [..., k, e] with equal batch shapes, as one bmm whatever the batch
    size. torch.matmul turns a batch of one into a plain mm, whose rounding differs from bmm's;
    the unconverged Newton inverse amplifies that into outputs that depend on the batch size."""
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.view(*a.shape[:-2], *out.shape[-2:])


def gaussian_kernel_torch(a: Tensor, b: Tensor) -> Tensor:
    """Dense G(a, b): [..., Na, d] x [..., Nb, d] -> [..., Na, Nb] (float32 or float64)."""
    with torch.autocast(a.device.type, enabled=False):
        a, b = upcast(a, b)
        # -||a - b||^2 / 2 = a.b - (||a||^2 + ||b||^2) / 2, the release's expansion; the GEMM adds
        # the norms as it writes its output, so G costs one GEMM and one in-place exp over N x m.
        half_sq = (a.square().sum(-1).unsqueeze(-1) + b.square().sum(-1).unsqueeze(-2)) * -0.5
        a3 = a.reshape(-1, *a.shape[-2:])
        b3 = b.reshape(-1, *b.shape[-2:])
        logits = torch.baddbmm(half_sq.reshape(-1, *half_sq.shape[-2:]), a3, b3.transpose(1, 2))
        return logits.exp_().view(*a.shape[:-1], b.shape[-2])


def gaussian_kernel_matmul_torch(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """G(a, b) @ w: [..., Na, d], [..., Nb, d], [..., Nb, e] -> [..., Na, e] (float32 or float64)."""
    with torch.autocast(a.device.type, enabled=False):
        return batched_matmul(gaussian_kernel_torch(a, b), upcast(w)[0])


def gaussian_kernel_t_matmul_torch(a: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """G(a, b)^T @ v: [..., Na, d], [..., Nb, d], [..., Na, e] -> [..., Nb, e] (float32 or float64)."""
    with torch.autocast(a.device.type, enabled=False):
        return batched_matmul(gaussian_kernel_torch(a, b).transpose(-1, -2), upcast(v)[0])

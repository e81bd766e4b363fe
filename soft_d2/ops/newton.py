"""The Moore-Penrose inverse of SOFT's landmark kernel by Newton-Schulz iteration (spec §4).

The released weights were trained with a fixed, usually unconverged number of iterations, so the
iteration is part of the model and is reproduced exactly. Two numerics exist:

``"regularized"`` (plain SOFT, current release)
    alpha = 1.8 / (max row-sum of A)^2 per matrix; P = A + 0.01 I; V0 = alpha P.
``"halving"`` (SOFT-Norm, and the plain models trained in 2021)
    P = A; alpha = 2 / (max row-sum of A)^2, halved (at most 10 times) while
    max_j sum_i |I - P (alpha P)|_ij > 1.01. The release takes these maxima over the whole batch;
    we take them per image (over its heads), which equals the release at batch size 1 and keeps
    images independent.

Then ``max_iter`` steps of V <- 2V - (V P) V. The backward pass is the closed form of an inverse,
dL/dP = -V^T (dL/dV) V^T, computed once (journal version), not backpropagation through the steps.
Everything runs in float32 (float64 inputs stay float64), also under autocast: half precision
overflows here.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import upcast

NEWTON_NUMERICS = ("regularized", "halving")

_REGULARIZER = 0.01
_HALVING_THRESHOLD = 1.01
_MAX_HALVINGS = 10


def _initial_scale_regularized(a: Tensor) -> Tensor:
    """alpha per matrix of a [B, h, m, m] stack: 0.9 * 2 / (max row sum)^2."""
    max_row_sum = a.sum(-1).amax(-1, keepdim=True).unsqueeze(-1)  # [B, h, 1, 1]
    return max_row_sum.square().reciprocal() * (0.9 * 2)


def _initial_scale_halving(p: Tensor) -> Tensor:
    """alpha per image (shared by its heads), halved until I - P(alpha P) is small enough.

    Halvings scale P(alpha P) by exact powers of two, so the product is formed once and every
    check the release would make is evaluated from it, without a host sync.
    """
    batch = p.shape[0]
    max_row_sum = p.sum(-1).reshape(batch, -1).amax(-1)  # [B]
    alpha = (max_row_sum.square().reciprocal() * 2).view(batch, 1, 1, 1)
    product = torch.matmul(p, alpha * p)  # P (alpha P), [B, h, m, m]
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    halvings = torch.zeros(batch, dtype=torch.int64, device=p.device)
    settled = torch.zeros(batch, dtype=torch.bool, device=p.device)
    for k in range(_MAX_HALVINGS):
        residual = (eye - product * (0.5**k)).abs().sum(-2)  # column sums, [B, h, m]
        small = residual.reshape(batch, -1).amax(-1) <= _HALVING_THRESHOLD
        settled = settled | small
        halvings = halvings + (~settled).long()
    return alpha * torch.pow(0.5, halvings.to(p.dtype)).view(batch, 1, 1, 1)


def newton_schulz_iterate(p: Tensor, v: Tensor, max_iter: int) -> Tensor:
    """max_iter steps of V <- 2V - (V P) V on [..., m, m] stacks (no autograd bookkeeping)."""
    shape = v.shape
    p3 = p.reshape(-1, shape[-2], shape[-1])
    v3 = v.reshape(-1, shape[-2], shape[-1])
    for _ in range(max_iter):
        v3 = torch.baddbmm(v3, torch.bmm(v3, p3), v3, beta=2.0, alpha=-1.0)
    return v3.reshape(shape)


def newton_inverse_forward(a: Tensor, max_iter: int, numerics: str) -> Tensor:
    """The released approximate inverse of a [B, h, m, m] stack of symmetric kernels."""
    if numerics == "regularized":
        alpha = _initial_scale_regularized(a)
        # The release forms 0.01 I in float32 (torch's default dtype), so float64 adds float32(0.01).
        p = a + (torch.eye(a.shape[-1], device=a.device) * _REGULARIZER).to(a.dtype)
    elif numerics == "halving":
        p = a
        alpha = _initial_scale_halving(p)
    else:
        raise ValueError(f"newton numerics must be one of {NEWTON_NUMERICS}, got {numerics!r}")
    return newton_schulz_iterate(p, alpha * p, max_iter)


class _NewtonInverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, max_iter: int, numerics: str) -> Tensor:
        inv = newton_inverse_forward(a, max_iter, numerics)
        ctx.save_for_backward(inv)
        return inv

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inv,) = ctx.saved_tensors
        inv_t = inv.transpose(-1, -2)
        return -torch.matmul(torch.matmul(inv_t, grad), inv_t), None, None


def newton_inverse(a: Tensor, max_iter: int = 20, numerics: str = "regularized") -> Tensor:
    """Approximate pinv of a [B, h, m, m] stack of symmetric PSD kernels, in float32 or float64.

    Gradients use the closed form of an exact inverse (of A + 0.01 I for ``"regularized"``).
    """
    if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"newton_inverse expects a [B, heads, m, m] stack, got {tuple(a.shape)}")
    if numerics not in NEWTON_NUMERICS:
        raise ValueError(f"newton numerics must be one of {NEWTON_NUMERICS}, got {numerics!r}")
    if max_iter < 0:
        raise ValueError(f"newton max_iter must be >= 0, got {max_iter}")
    with torch.autocast(a.device.type, enabled=False):
        return _NewtonInverse.apply(upcast(a)[0], int(max_iter), numerics)

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
``newton_inverse`` forms V in the release's own order, in float32 (float64 inputs stay float64);
``newton_solve`` (what the model uses) applies the same polynomial of P to a thin right-hand side,
in float64. Half precision is never used here, also under autocast: it overflows.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import batched_matmul, upcast

NEWTON_NUMERICS = ("regularized", "halving")

_REGULARIZER = 0.01
_HALVING_THRESHOLD = 1.01
_MAX_HALVINGS = 10


def _initial_scale_regularized(a: Tensor) -> Tensor:
    """alpha per matrix of a [B, h, m, m] stack: 0.9 * 2 / (max row sum)^2."""
    max_row_sum = a.sum(-1).amax(-1, keepdim=True).unsqueeze(-1)  # [B, h, 1, 1]
    return max_row_sum.square().reciprocal() * (0.9 * 2)


def _halving_start(p: Tensor) -> tuple[Tensor, Tensor]:
    """alpha per image (shared by its heads), halved until I - P(alpha P) is small enough, and
    the product P(alpha P) for that final alpha.

    Halvings scale P(alpha P) by exact powers of two, so the product is formed once and every
    check the release would make is evaluated from it, without a host sync. (With alpha =
    2 / max-row-sum^2 the tenth halving is never reached: ||P^2||_1 <= max-row-sum^2.)
    """
    batch = p.shape[0]
    max_row_sum = p.sum(-1).reshape(batch, -1).amax(-1)  # [B]
    alpha = (max_row_sum.square().reciprocal() * 2).view(batch, 1, 1, 1)
    product = batched_matmul(p, alpha * p)  # P (alpha P), [B, h, m, m]
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    halvings = torch.zeros(batch, dtype=torch.int64, device=p.device)
    settled = torch.zeros(batch, dtype=torch.bool, device=p.device)
    for k in range(_MAX_HALVINGS):
        residual = (eye - product * (0.5**k)).abs().sum(-2)  # column sums, [B, h, m]
        small = residual.reshape(batch, -1).amax(-1) <= _HALVING_THRESHOLD
        settled = settled | small
        halvings = halvings + (~settled).long()
    scale = torch.pow(0.5, halvings.to(p.dtype)).view(batch, 1, 1, 1)
    return alpha * scale, product * scale


def _regularized(a: Tensor) -> Tensor:
    # The release forms 0.01 I in float32 (torch's default dtype), so float64 adds float32(0.01).
    return a + (torch.eye(a.shape[-1], device=a.device) * _REGULARIZER).to(a.dtype)


def _scale(a: Tensor, numerics: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """(P, alpha, P (alpha P) where it was formed anyway) of the chosen numerics."""
    if numerics == "regularized":
        return _regularized(a), _initial_scale_regularized(a), None
    if numerics == "halving":
        alpha, w0 = _halving_start(a)
        return a, alpha, w0
    raise ValueError(f"newton numerics must be one of {NEWTON_NUMERICS}, got {numerics!r}")


def _start(a: Tensor, numerics: str) -> tuple[Tensor, Tensor, Tensor]:
    """(P, alpha, W0 = P (alpha P)) of the chosen numerics."""
    p, alpha, w0 = _scale(a, numerics)
    return p, alpha, batched_matmul(p, alpha * p) if w0 is None else w0


def newton_schulz_iterate(p: Tensor, v: Tensor, max_iter: int) -> Tensor:
    """max_iter steps of V <- 2V - (V P) V on [..., m, m] stacks (no autograd bookkeeping)."""
    shape = v.shape
    p3 = p.reshape(-1, shape[-2], shape[-1])
    v3 = v.reshape(-1, shape[-2], shape[-1])
    for _ in range(max_iter):
        v3 = torch.baddbmm(v3, torch.bmm(v3, p3), v3, beta=2.0, alpha=-1.0)
    return v3.reshape(shape)


def newton_inverse_forward(a: Tensor, max_iter: int, numerics: str) -> Tensor:
    """The released approximate inverse of a [B, h, m, m] stack, in the release's own order."""
    p, alpha, _ = _start(a, numerics)
    return newton_schulz_iterate(p, alpha * p, max_iter)


def newton_solve_forward(a: Tensor, rhs: Tensor, max_iter: int, numerics: str) -> Tensor:
    """V_n @ rhs for the same V_n as newton_inverse_forward, in half the matrix products.

    Every V_k is a polynomial in P, so all factors commute. With W_k = P V_k:
        V_{k+1} = V_k (2I - W_k),   W_{k+1} = W_k (2I - W_k) = 2 W_k - W_k^2,
    hence V_n rhs = alpha P (2I - W_0) ... (2I - W_{n-1}) rhs: one m x m product per step (the
    square) plus thin m x e products, instead of the two m x m products of V <- 2V - (V P) V.
    Identical polynomial of P; float32 rounding differs from the release's order at ~1e-6.
    """
    p, alpha, w = _start(a, numerics)
    out = rhs
    for k in range(max_iter):
        out = torch.baddbmm(out.flatten(0, -3), w.flatten(0, -3), out.flatten(0, -3), beta=2.0, alpha=-1.0
                            ).view_as(out)
        if k + 1 < max_iter:
            w3 = w.flatten(0, -3)
            w = torch.baddbmm(w3, w3, w3, beta=2.0, alpha=-1.0).view_as(w)
    return alpha * batched_matmul(p, out)


def _eigh(p: Tensor) -> tuple[Tensor, Tensor]:
    """torch.linalg.eigh; on a CPU with one thread: LAPACK's small (m <= a few hundred) batched
    eigensolves run 2-5x slower with several OpenMP threads (measured, 2 cores: 20 matrices of
    100 x 100, 60 ms with 2 threads, 13 ms with 1), and on one thread the result does not depend on the
    thread count the caller set."""
    if p.is_cuda or torch.compiler.is_compiling():  # a compiled graph cannot change the thread count
        return torch.linalg.eigh(p)
    threads = torch.get_num_threads()
    if threads == 1:
        return torch.linalg.eigh(p)
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(p)
    finally:
        torch.set_num_threads(threads)


def newton_spectral_factors(a: Tensor, max_iter: int, numerics: str) -> tuple[Tensor, Tensor]:
    """(U, f) with V_n = U diag(f) U^T, from one symmetric eigendecomposition P = U diag(l) U^T.

    V_n is the polynomial alpha P (2I - W_0) ... (2I - W_{n-1}) of P (see newton_solve_forward),
    so on each eigenvalue l it is f(l) = alpha l (2 - w_0) ... (2 - w_{n-1}) with w_0 = alpha l^2,
    w_{k+1} = 2 w_k - w_k^2, evaluated in float64. On a CPU, one eigendecomposition costs a few
    times less than the n - 1 squarings, and backward reuses (U, f).
    """
    p, alpha, _ = _scale(a, numerics)
    eigenvalues, u = _eigh(p)
    lam = eigenvalues.double()
    scale = alpha.double().squeeze(-1)  # [B, h, 1]
    w, f = scale * lam.square(), scale * lam
    return u, (f * newton_eigenvalue_product(w, max_iter)).to(u.dtype)


def newton_eigenvalue_product(w: Tensor, max_iter: int) -> Tensor:
    """(2 - w_0) ... (2 - w_{n-1}) for w_{k+1} = (2 - w_k) w_k, elementwise, in closed form.

    1 - w_{k+1} = (1 - w_k)^2, so for k >= 1, 2 - w_k = 1 + exp(2^(k-1) log1p(-w_1)), w_1 = (2 - w_0) w_0
    in [0, 1]; log1p keeps the small w (small eigenvalues) exact where 1 - w would round them away.
    Every factor reads w_1 once: the recurrence reads w_k twice per step, which a fusing compiler
    (Inductor) expands into 2^n terms.
    """
    if max_iter == 0:
        return torch.ones_like(w)
    w1 = (2 - w) * w
    product = 2 - w
    log_s1 = torch.log1p(-w1)
    for k in range(1, max_iter):
        product = product * (1 + torch.exp(log_s1 * 2.0 ** (k - 1)))
    return product


def apply_spectral(u: Tensor, f: Tensor, rhs: Tensor) -> Tensor:
    """U diag(f) U^T rhs."""
    return batched_matmul(u, f.unsqueeze(-1) * batched_matmul(u.transpose(-1, -2), rhs))


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
        return -batched_matmul(batched_matmul(inv_t, grad), inv_t), None, None


def _check(a: Tensor, numerics: str, max_iter: int) -> None:
    if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"the Newton inverse expects a [B, heads, m, m] stack, got {tuple(a.shape)}")
    if numerics not in NEWTON_NUMERICS:
        raise ValueError(f"newton numerics must be one of {NEWTON_NUMERICS}, got {numerics!r}")
    if max_iter < 0:
        raise ValueError(f"newton max_iter must be >= 0, got {max_iter}")


def newton_inverse(a: Tensor, max_iter: int = 20, numerics: str = "regularized") -> Tensor:
    """Approximate pinv of a [B, h, m, m] stack of symmetric PSD kernels, in float32 or float64.

    Gradients use the closed form of an exact inverse (of A + 0.01 I for ``"regularized"``).
    """
    _check(a, numerics, max_iter)
    with torch.autocast(a.device.type, enabled=False):
        return _NewtonInverse.apply(upcast(a)[0], int(max_iter), numerics)


NEWTON_SOLVERS = ("auto", "eigh", "squaring")


class _NewtonSolve(torch.autograd.Function):
    """out = V_n rhs. Backward: V_n is symmetric (a polynomial in symmetric P), so d rhs = V_n g,
    and by the closed form of an inverse dP = -V^T g rhs^T V^T = -(V_n g) out^T."""

    @staticmethod
    def forward(ctx, a: Tensor, rhs: Tensor, max_iter: int, numerics: str, solver: str) -> Tensor:
        ctx.solver = solver
        if solver == "eigh":
            u, f = newton_spectral_factors(a, max_iter, numerics)
            out = apply_spectral(u, f, rhs)
            ctx.save_for_backward(u, f, out)
        else:  # squaring: V_n g is recomputed in backward rather than V or the W_k kept
            out = newton_solve_forward(a, rhs, max_iter, numerics)
            ctx.save_for_backward(a, out)
            ctx.settings = (max_iter, numerics)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.solver == "eigh":
            u, f, out = ctx.saved_tensors
            grad_rhs = apply_spectral(u, f, grad)
        else:
            a, out = ctx.saved_tensors
            grad_rhs = newton_solve_forward(a, grad, *ctx.settings)
        grad_a = -batched_matmul(grad_rhs, out.transpose(-1, -2)) if ctx.needs_input_grad[0] else None
        return grad_a, grad_rhs, None, None, None


def newton_solve(a: Tensor, rhs: Tensor, max_iter: int = 20, numerics: str = "regularized",
                 solver: str = "auto") -> Tensor:
    """newton_inverse(a) @ rhs without forming the inverse: [B, h, m, m], [B, h, m, e] -> [B, h, m, e].

    The form the model uses: the same polynomial of P as the released iteration, evaluated by a
    symmetric eigendecomposition (``solver="eigh"``, the CPU default: cheapest there) or by
    repeated squaring (``"squaring"``, the GPU default: batched GEMMs, and what ONNX export
    records), in float64. Closed-form
    gradients; returns float32 (float64 for float64 inputs), also under autocast.
    """
    _check(a, numerics, max_iter)
    if solver not in NEWTON_SOLVERS:
        raise ValueError(f"newton solver must be one of {NEWTON_SOLVERS}, got {solver!r}")
    if rhs.shape[:-1] != a.shape[:-1]:
        raise ValueError(f"newton_solve: rhs {tuple(rhs.shape)} does not match the matrices {tuple(a.shape)}")
    if solver == "auto":  # ONNX has no eigendecomposition operator
        solver = "squaring" if a.is_cuda or torch.onnx.is_in_onnx_export() else "eigh"
    with torch.autocast(a.device.type, enabled=False):
        dtype = torch.promote_types(upcast(a)[0].dtype, upcast(rhs)[0].dtype)
        # Solved in float64 (m x m work, small next to the N x m products): the unconverged
        # iteration amplifies rounding, so float32 evaluations of this polynomial other than the
        # release's own order land ~1e-5 from it; in float64 we hit the exact polynomial, which
        # is as close to the release's float32 result as that is to itself (~1e-6), and rounding
        # does not vary with the batch size.
        out = _NewtonSolve.apply(a.double(), rhs.double(), int(max_iter), numerics, solver)
        return out.to(dtype)

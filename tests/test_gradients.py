"""Gradients: the closed-form backward of the Newton inverse, the Gaussian kernel, autocast."""
import pytest
import torch

from soft_d2 import ops
from soft_d2.ops.newton import newton_inverse_forward


def _spd(batch, heads, m, seed):
    """Well-conditioned, entrywise positive, symmetric positive definite stack (like a kernel
    matrix; eigenvalues in ~[0.8, 1.3]), so that 60 Newton steps converge in float64."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, heads, m, m, generator=gen, dtype=torch.float64)
    sym = (x + x.transpose(-1, -2)) / (4 * m)
    return torch.eye(m, dtype=torch.float64) + sym


@pytest.mark.parametrize("numerics", ["regularized", "halving"])
def test_inverse_gradcheck(numerics):
    a = _spd(2, 2, 6, 0).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.newton_inverse(t, 60, numerics), (a,), eps=1e-6, atol=1e-7)


def test_inverse_backward_is_closed_form_not_unrolled():
    # With few steps the iteration is far from converged: the gradient is still the closed form
    # -V^T g V^T of the returned V, not the derivative of the 2 unrolled steps.
    a = _spd(1, 1, 5, 1).requires_grad_()
    v = ops.newton_inverse(a, 2, "halving")
    g = torch.randn_like(v)
    (grad,) = torch.autograd.grad(v, a, g)
    vd = v.detach()
    assert torch.allclose(grad, -vd.transpose(-1, -2) @ g @ vd.transpose(-1, -2))
    unrolled = torch.autograd.grad(newton_inverse_forward(a, 2, "halving"), a, g)[0]
    assert not torch.allclose(grad, unrolled, rtol=1e-3)


def test_gaussian_kernel_gradcheck():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 2, 7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ops.gaussian_kernel(x, y, "torch"), (a, b))
    dense = torch.exp(-torch.cdist(a, b) ** 2 / 2)
    assert torch.allclose(ops.gaussian_kernel(a, b, "torch"), dense, rtol=1e-12)


def test_nystrom_attention_gradcheck_and_value():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    lm = torch.randn(1, 2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mid = torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64)

    def f(q, lm, v):
        return ops.nystrom_attention(q, lm, v, lambda s: mid @ s, "torch")

    k1 = torch.exp(-torch.cdist(q, lm) ** 2 / 2)
    assert torch.allclose(f(q, lm, v), (k1 @ mid) @ (k1.transpose(-1, -2) @ v), rtol=1e-12)
    assert torch.autograd.gradcheck(f, (q, lm, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inverse_stays_float32_under_autocast(dtype):
    a = _spd(1, 2, 8, 2).float()
    with torch.autocast("cpu", dtype=dtype):
        v = ops.newton_inverse(a.to(dtype), 20, "halving")
    assert v.dtype == torch.float32
    exact = torch.linalg.inv(a.to(dtype).float())
    assert torch.allclose(v, exact, atol=1e-4)


@pytest.mark.parametrize("solver", ["eigh", "squaring"])
@pytest.mark.parametrize("numerics", ["regularized", "halving"])
def test_newton_solve_gradcheck(numerics, solver):
    a = _spd(1, 2, 5, 3).requires_grad_()
    rhs = torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    # The kernels are symmetric, and the eigendecomposition reads one triangle: differentiate
    # along symmetric perturbations, as the model's K2 = G(L, L) only ever moves.
    def solve(t, r):
        return ops.newton_solve((t + t.transpose(-1, -2)) / 2, r, 60, numerics, solver=solver)

    assert torch.autograd.gradcheck(solve, (a, rhs), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("solver", ["eigh", "squaring"])
def test_newton_solve_backward_equals_closed_form_of_explicit_inverse(solver):
    # Unconverged (3 steps): gradients of solve(A, r) equal those of newton_inverse(A) @ r.
    a = _spd(2, 2, 6, 4).requires_grad_()
    rhs = torch.randn(2, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 2, 6, 4, dtype=torch.float64)
    ga, gr = torch.autograd.grad(ops.newton_solve(a, rhs, 3, "halving", solver=solver), (a, rhs), g)
    ea, er = torch.autograd.grad(ops.newton_inverse(a, 3, "halving") @ rhs, (a, rhs), g)
    assert torch.allclose(ga, ea, rtol=1e-10, atol=1e-12) and torch.allclose(gr, er, rtol=1e-10, atol=1e-12)

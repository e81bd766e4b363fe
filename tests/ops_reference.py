"""Independent float64 references for the Gaussian-kernel ops (direct differences, not the
|a|^2 + |b|^2 - 2ab expansion the implementations use), and the check routines shared by the CPU
and CUDA test modules."""
from __future__ import annotations

import collections
import contextlib

import torch

from soft_d2 import ops
from soft_d2.ops import extension


class _CountingModule:
    """Stands in for soft_d2._C: forwards every call and counts it by function name."""

    def __init__(self, module, counts: collections.Counter):
        self._module, self._counts = module, counts

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self._counts[name] += 1
            return attr(*args, **kwargs)

        return counted


@contextlib.contextmanager
def count_compiled_calls():
    """Counter of the calls into the compiled engine (soft_d2._C) made inside the block, so that a
    test of the compiled path can assert it ran (dispatch falls back to PyTorch on small inputs)."""
    counts: collections.Counter = collections.Counter()
    real = extension._C
    assert real is not None, "soft_d2._C is not built"
    extension._C = _CountingModule(real, counts)
    try:
        yield counts
    finally:
        extension._C = real


COMPILED_NAMES = {"kernel": "gaussian_kernel", "matmul": "kernel_matmul", "t_matmul": "kernel_t_matmul"}


def dense_kernel64(a, b):
    diff = a.double().unsqueeze(-2) - b.double().unsqueeze(-3)  # [..., N, m, d]
    return torch.exp(-0.5 * diff.square().sum(-1))


def reference(op: str, a, b, x=None):
    g = dense_kernel64(a, b)
    if op == "kernel":
        return g
    if op == "matmul":
        return g @ x.double()
    return g.transpose(-1, -2) @ x.double()


def call(op: str, method: str, a, b, x=None, **kw):
    if op == "kernel":
        return ops.gaussian_kernel(a, b, method, **kw)
    if op == "matmul":
        return ops.gaussian_kernel_matmul(a, b, x, method, **kw)
    return ops.gaussian_kernel_t_matmul(a, b, x, method, **kw)


def make_inputs(op, batch, n, m, d, e, dtype=torch.float32, device="cpu", scale=0.5, seed=0):
    """Fresh random inputs (never zeros); the third operand has b's rows (matmul) or a's (t_matmul)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, n, d, generator=gen, dtype=torch.float64) * scale
    b = torch.randn(*batch, m, d, generator=gen, dtype=torch.float64) * scale
    rows = m if op == "matmul" else n
    x = torch.randn(*batch, rows, e, generator=gen, dtype=torch.float64) if op != "kernel" else None
    to = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return to(a), to(b), to(x)


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def check_forward_backward(op, method, batch, n, m, d, e, dtype, device, tol, tile_rows=None, seed=0):
    """Forward and every input gradient against float64 autograd through the dense reference."""
    a, b, x = make_inputs(op, batch, n, m, d, e, dtype, device, seed=seed)
    leaves = [t.clone().requires_grad_() for t in (a, b, x) if t is not None]
    with count_compiled_calls() if method == "compiled" else contextlib.nullcontext() as counts:
        out = call(op, method, *leaves, tile_rows=tile_rows)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        out.backward(upstream.to(device=device, dtype=out.dtype))
    if method == "compiled":  # the engine itself ran, forward and backward
        assert counts[COMPILED_NAMES[op] + "_forward"] == 1 and counts[COMPILED_NAMES[op] + "_backward"] == 1, counts
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference(op, *ref_leaves)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < tol, (op, method, rel_err(out, ref))
    ref.backward(upstream.to(device))
    for name, leaf, ref_leaf in zip("abx", leaves, ref_leaves):
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype, name
        err = rel_err(leaf.grad, ref_leaf.grad)
        assert err < tol, (op, method, name, err)

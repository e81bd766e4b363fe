"""The Gaussian-kernel ops on the CPU: compiled extension and the streamed PyTorch path, forward
and backward, against float64 dense references."""
from __future__ import annotations

import os

import pytest
import torch
from torch.autograd import gradcheck

from soft_d2 import ops
from ops_reference import call, check_forward_backward, count_compiled_calls, make_inputs

if not ops.compiled_available() and os.environ.get("SOFT_D2_NO_EXT") == "1":
    pytest.skip("extension deliberately not built (SOFT_D2_NO_EXT=1)", allow_module_level=True)


@pytest.fixture(autouse=True)
def _engine_ran(request):
    """Every test here runs the compiled engine (or, parametrized with method="torch", never)."""
    with count_compiled_calls() as counts:
        yield
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("method") == "torch":
        assert not counts, counts
    else:
        assert sum(counts.values()) > 0, "the compiled engine was never called"


OPS = ["kernel", "matmul", "t_matmul"]
# (batch dims, N, m, d, e, tile_rows): tiles not dividing N, N < tile, m = 1, d and e over 32.
SHAPES = [
    ((2, 3), 37, 11, 8, 5, 16),
    ((1, 2), 5, 9, 32, 32, None),
    ((2,), 20, 1, 4, 3, 7),
    ((1, 1), 70, 33, 40, 48, None),
]
# the streamed torch path only exists for the two products
METHOD_OPS = [("compiled", op) for op in OPS] + [("torch", "matmul"), ("torch", "t_matmul")]


def _streamed_tile(method, tile):
    # no tile: the compiled engine picks its own (engine_dispatch sends every size to it); the
    # torch path is given one so that it streams in several chunks
    return tile or (8 if method == "torch" else None)


@pytest.mark.parametrize("method,op", METHOD_OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[1]}m{s[2]}d{s[3]}e{s[4]}t{s[5]}")
def test_float64_matches_dense_reference(method, op, shape, engine_dispatch):
    batch, n, m, d, e, tile = shape
    check_forward_backward(op, method, batch, n, m, d, e, torch.float64, "cpu", 1e-12,
                           tile_rows=_streamed_tile(method, tile))


@pytest.mark.parametrize("method,op", METHOD_OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[1]}m{s[2]}d{s[3]}e{s[4]}t{s[5]}")
def test_float32_matches_dense_reference(method, op, shape, engine_dispatch):
    batch, n, m, d, e, tile = shape
    check_forward_backward(op, method, batch, n, m, d, e, torch.float32, "cpu", 1e-5,
                           tile_rows=_streamed_tile(method, tile))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("op", OPS)
def test_half_precision_computes_in_float32(op, dtype, tol):
    # Output float32 and accurate to float32 for the (rounded) inputs; grads rounded to dtype.
    check_forward_backward(op, "compiled", (2, 2), 45, 13, 32, 32, dtype, "cpu", tol, tile_rows=16)


@pytest.mark.parametrize("method,op", METHOD_OPS)
def test_gradcheck_float64(method, op):
    a, b, x = make_inputs(op, (1, 2), 9, 4, 3, 2, torch.float64, seed=3)
    leaves = [t.requires_grad_() for t in (a, b, x) if t is not None]
    assert gradcheck(lambda *t: call(op, method, *t, tile_rows=4), leaves)


@pytest.mark.parametrize("method,op", METHOD_OPS)
def test_non_contiguous_inputs(method, op):
    a, b, x = make_inputs(op, (2, 3), 40, 12, 16, 8, seed=5)
    # same values, transposed storage / strided slices
    a_nc = a.transpose(-1, -2).contiguous().transpose(-1, -2)
    b_nc = torch.stack([b, b], -1)[..., 0]
    x_nc = None if x is None else x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not a_nc.is_contiguous() and not b_nc.is_contiguous()
    assert x_nc is None or not x_nc.is_contiguous()
    want = call(op, method, a, b, x, tile_rows=16)
    got = call(op, method, a_nc, b_nc, x_nc, tile_rows=16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["matmul", "t_matmul"])
def test_compiled_and_streamed_torch_agree_with_dense_torch(op):
    a, b, x = make_inputs(op, (2, 2), 300, 20, 32, 32, seed=7)
    dense = call(op, "torch", a, b, x)  # small: the dense formula
    for got in (call(op, "compiled", a, b, x), call(op, "torch", a, b, x, tile_rows=64)):
        torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-6)


def test_tile_size_does_not_change_results():
    a, b, x = make_inputs("t_matmul", (1, 2), 257, 31, 32, 32, seed=9)
    outs = [ops.gaussian_kernel_t_matmul(a, b, x, "compiled", tile_rows=t) for t in (1, 16, 100, 257, 10_000)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-6)


def test_empty_rows():
    a, b, x = make_inputs("t_matmul", (1, 2), 0, 5, 4, 3)
    assert torch.equal(ops.gaussian_kernel_t_matmul(a, b, x, "compiled"), torch.zeros(1, 2, 5, 3))
    assert ops.gaussian_kernel_matmul(a, b, torch.ones(1, 2, 5, 3), "compiled").shape == (1, 2, 0, 3)


def test_autocast_inputs_give_float32():
    a, b, x = make_inputs("matmul", (1, 2), 30, 6, 8, 4, seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.gaussian_kernel_matmul(a, b, x, "compiled")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ops.gaussian_kernel_matmul(a, b, x, "torch"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", OPS)
def test_engine_tiles_run_on_every_thread(op):
    """The engine's tile loop is an at::parallel_for, serial unless the extension is compiled with
    OpenMP; its tiles call ATen ops on the worker threads, which must see the caller's grad mode
    (else autograd rejects their out= products in the backward)."""
    from soft_d2.ops import extension

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert extension.compiled_module().parallel_threads() == 2, "soft_d2._C runs its loops on one thread"
        # 6 heads x 8 tiles of 256 x 256: tiles worth a thread each (small tiles would be grouped
        # into one task on the calling thread)
        check_forward_backward(op, "compiled", (2, 3), 2048, 256, 32, 16, torch.float32, "cpu", 2e-5, tile_rows=256)
    finally:
        torch.set_num_threads(before)

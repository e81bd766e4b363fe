"""The Gaussian-kernel ops on CUDA: the fused forwards and the streamed backward against float64
references, in every dtype. Skipped (reported as skipped) without a GPU."""
from __future__ import annotations

import pytest
import torch

from soft_d2 import ops
from ops_reference import call, check_forward_backward, count_compiled_calls, make_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OPS = ["kernel", "matmul", "t_matmul"]
# multiple row/landmark tiles, tiles not dividing N or m, N < tile, m = 1, d and e over 32,
# and enough rows for the column pass to split them.
SHAPES = [
    ((2, 3), 37, 11, 8, 5),
    ((1, 2), 5, 9, 32, 32),
    ((2,), 20, 1, 4, 3),
    ((1, 1), 70, 33, 40, 48),
    ((1, 2), 5000, 300, 32, 32),
]
TOLS = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def test_extension_has_cuda_kernels():
    assert ops.compiled_available(), "soft_d2._C is not built"
    from soft_d2 import _C

    assert _C.built_with_cuda(), "soft_d2._C was built without CUDA (set FORCE_CUDA=1 and rebuild)"


@pytest.mark.parametrize("dtype", list(TOLS), ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[1]}m{s[2]}d{s[3]}e{s[4]}")
def test_matches_dense_reference(shape, op, dtype, engine_dispatch):
    batch, n, m, d, e = shape
    check_forward_backward(op, "compiled", batch, n, m, d, e, dtype, "cuda", TOLS[dtype])


@pytest.mark.parametrize("op", OPS)
def test_streamed_tiles_on_cuda(op):
    # tile sizes forced small for the backward engine (the forward ignores them when fused)
    check_forward_backward(op, "compiled", (2, 2), 301, 17, 32, 32, torch.float32, "cuda", 1e-5, tile_rows=64)


@pytest.mark.parametrize("op", ["matmul", "t_matmul"])
def test_deterministic_and_same_as_cpu(op):
    a, b, x = make_inputs(op, (2, 2), 4000, 200, 32, 32, device="cuda", seed=12)
    first, second = call(op, "compiled", a, b, x), call(op, "compiled", a, b, x)
    assert torch.equal(first, second)  # no atomics: bit-identical reruns
    cpu = call(op, "compiled", a.cpu(), b.cpu(), None if x is None else x.cpu())
    torch.testing.assert_close(first.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["matmul", "t_matmul"])
def test_non_contiguous_and_mixed_dtypes(op):
    a, b, x = make_inputs(op, (2, 3), 100, 20, 32, 16, device="cuda", seed=13)
    want = call(op, "compiled", a, b, x)
    a_nc = a.transpose(-1, -2).contiguous().transpose(-1, -2)
    torch.testing.assert_close(call(op, "compiled", a_nc, b, x), want, rtol=1e-5, atol=1e-6)
    mixed = call(op, "compiled", a.half(), b.half(), x)  # half a/b with float32 x: engine path
    torch.testing.assert_close(mixed, call(op, "compiled", a.half().float(), b.half().float(), x),
                               rtol=1e-5, atol=1e-6)


def test_nystrom_attention_compiled_matches_torch_on_cuda(monkeypatch):
    gen = torch.Generator().manual_seed(14)
    q = (torch.randn(2, 2, 3000, 32, generator=gen) * 0.3).cuda().requires_grad_()
    lm = (torch.randn(2, 2, 60, 32, generator=gen) * 0.3).cuda().requires_grad_()
    v = torch.randn(2, 2, 3000, 32, generator=gen).cuda().requires_grad_()
    mid = (torch.randn(2, 2, 60, 60, generator=gen) / 60).cuda()
    results = []
    for method in ("torch", "compiled"):
        if method == "compiled":  # this size is below STREAM_ELEMENTS: send it to the engine
            monkeypatch.setattr("soft_d2.ops.streamed_torch.STREAM_ELEMENTS", 0)
        with count_compiled_calls() as counts:
            out = ops.nystrom_attention(q, lm, v, lambda s: mid @ s, method)
            grads = torch.autograd.grad(out.square().sum(), (q, lm, v))
        assert (sum(counts.values()) > 0) == (method == "compiled"), (method, counts)
        results.append((out, *grads))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_errors_name_tensors_on_cuda():
    a = torch.randn(1, 10, 4, device="cuda")
    with pytest.raises(ValueError, match="b is on cpu but a is on cuda"):
        ops.gaussian_kernel_matmul(a, torch.randn(1, 6, 4), torch.randn(1, 6, 3, device="cuda"), "compiled")

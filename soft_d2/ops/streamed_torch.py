"""Pure-PyTorch streamed Gaussian-kernel products: the compiled engine's algorithm in PyTorch ops.

G(a, b) is formed a chunk of a's rows at a time (all batch/head dims together), used and dropped,
in the forward and again in the backward, so memory is O(chunk x m + outputs) rather than the
O(N x m) (times the intermediates autograd keeps) of the dense formula. Computes in float32
(float64 stays float64), autocast off, like the dense path.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .gaussian import batched_matmul, gaussian_kernel_torch

# Above this many elements of G (all batch/head dims), G is streamed: 64 MB in float32. Below it,
# one GEMM and one exp beat the tile loop's thousands of small calls (SOFT-Tiny-Norm's stage 1 on
# one 800x1344 image under the detection bound: 11.3M; the faithful function there: 141M).
STREAM_ELEMENTS = 1 << 24
# Elements of G per streamed chunk: 16 MB in float32, so a chunk's G is reused while in cache.
CHUNK_ELEMENTS = 1 << 22


def should_stream(a: Tensor, b: Tensor) -> bool:
    """Whether G(a, b) is above STREAM_ELEMENTS. Never under torch.export with symbolic sizes: the
    chunk loop is a Python loop over a size, so an exported program that serves every size forms
    G densely (the same products; memory grows as N x m)."""
    elements = math.prod(a.shape[:-1]) * b.shape[-2]
    if isinstance(elements, torch.SymInt) and torch.compiler.is_exporting():
        return False
    return elements > STREAM_ELEMENTS


def chunk_rows(a: Tensor, b: Tensor, tile_rows: int | None) -> int:
    if tile_rows:
        return max(1, tile_rows)
    per_row = math.prod(a.shape[:-2]) * b.shape[-2]
    return max(1, min(STREAM_ELEMENTS, CHUNK_ELEMENTS) // max(per_row, 1))


def _common(*tensors: Tensor) -> tuple[Tensor, ...]:
    """float32, or float64 if any input is float64 (as the compiled op does)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return tuple(t.to(dtype) for t in tensors)


def _row_chunks(n: int, rows: int):
    return [slice(s, min(s + rows, n)) for s in range(0, n, rows)]


def _position_grads(s: Tensor, a_c: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """From S = dL/dG * G of one chunk: dL/da_c, and this chunk's part of dL/db."""
    ga = batched_matmul(s, b) - s.sum(-1, keepdim=True) * a_c
    gb = batched_matmul(s.transpose(-1, -2), a_c) - s.sum(-2).unsqueeze(-1) * b
    return ga, gb


class _StreamedKernelMatmul(Function):
    """G(a, b) @ w."""

    @staticmethod
    def forward(ctx, a, b, w, rows):
        with torch.autocast(a.device.type, enabled=False):
            a, b, w = _common(a, b, w)
            out = a.new_empty(*a.shape[:-1], w.shape[-1])
            for c in _row_chunks(a.shape[-2], rows):
                out[..., c, :] = batched_matmul(gaussian_kernel_torch(a[..., c, :], b), w)
        ctx.save_for_backward(a, b, w)
        ctx.rows = rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b, w = ctx.saved_tensors
        with torch.autocast(a.device.type, enabled=False):
            grad = grad.to(a.dtype)
            ga, gb, gw = torch.empty_like(a), torch.zeros_like(b), torch.zeros_like(w)
            for c in _row_chunks(a.shape[-2], ctx.rows):
                g = gaussian_kernel_torch(a[..., c, :], b)
                gy = grad[..., c, :]
                gw += batched_matmul(g.transpose(-1, -2), gy)
                s = batched_matmul(gy, w.transpose(-1, -2)).mul_(g)
                ga[..., c, :], gb_part = _position_grads(s, a[..., c, :], b)
                gb += gb_part
        return ga, gb, gw, None


class _StreamedKernelTMatmul(Function):
    """G(a, b)^T @ v."""

    @staticmethod
    def forward(ctx, a, b, v, rows):
        with torch.autocast(a.device.type, enabled=False):
            a, b, v = _common(a, b, v)
            out = b.new_zeros(*b.shape[:-1], v.shape[-1])
            for c in _row_chunks(a.shape[-2], rows):
                out += batched_matmul(gaussian_kernel_torch(a[..., c, :], b).transpose(-1, -2), v[..., c, :])
        ctx.save_for_backward(a, b, v)
        ctx.rows = rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b, v = ctx.saved_tensors
        with torch.autocast(a.device.type, enabled=False):
            grad = grad.to(a.dtype)
            ga, gb, gv = torch.empty_like(a), torch.zeros_like(b), torch.empty_like(v)
            for c in _row_chunks(a.shape[-2], ctx.rows):
                g = gaussian_kernel_torch(a[..., c, :], b)
                gv[..., c, :] = batched_matmul(g, grad)
                s = batched_matmul(v[..., c, :], grad.transpose(-1, -2)).mul_(g)
                ga[..., c, :], gb_part = _position_grads(s, a[..., c, :], b)
                gb += gb_part
        return ga, gb, gv, None


def gaussian_kernel_matmul_streamed(a: Tensor, b: Tensor, w: Tensor, tile_rows: int | None = None) -> Tensor:
    return _StreamedKernelMatmul.apply(a, b, w, chunk_rows(a, b, tile_rows))


def gaussian_kernel_t_matmul_streamed(a: Tensor, b: Tensor, v: Tensor, tile_rows: int | None = None) -> Tensor:
    return _StreamedKernelTMatmul.apply(a, b, v, chunk_rows(a, b, tile_rows))

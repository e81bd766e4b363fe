"""Autograd Functions over the compiled op (soft_d2._C): forward and streamed backward in C++/CUDA.

Inputs may be [..., rows, features] with any batch/head dims; they are flattened to
[batch*heads, rows, features] for the extension. Results are float32 (float64 if an input is);
gradients come back in each input's own dtype. First derivatives only (once_differentiable).
"""
from __future__ import annotations

import math

from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .extension import compiled_module


def _flat(x: Tensor) -> Tensor:
    return x.reshape(math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1])


def _as_inputs(grads, inputs):
    return tuple(g.to(x.dtype) for g, x in zip(grads, inputs))


class _GaussianKernel(Function):
    @staticmethod
    def forward(ctx, a, b, tile_rows):
        out = compiled_module().gaussian_kernel_forward(a, b, tile_rows)
        ctx.save_for_backward(a, b, out)
        ctx.tile_rows = tile_rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b, out = ctx.saved_tensors
        grads = compiled_module().gaussian_kernel_backward(grad, a, b, out, ctx.tile_rows)
        return (*_as_inputs(grads, (a, b)), None)


class _KernelMatmul(Function):
    @staticmethod
    def forward(ctx, a, b, w, tile_rows):
        ctx.save_for_backward(a, b, w)
        ctx.tile_rows = tile_rows
        return compiled_module().kernel_matmul_forward(a, b, w, tile_rows)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b, w = ctx.saved_tensors
        grads = compiled_module().kernel_matmul_backward(grad, a, b, w, ctx.tile_rows)
        return (*_as_inputs(grads, (a, b, w)), None)


class _KernelTMatmul(Function):
    @staticmethod
    def forward(ctx, a, b, v, tile_rows):
        ctx.save_for_backward(a, b, v)
        ctx.tile_rows = tile_rows
        return compiled_module().kernel_t_matmul_forward(a, b, v, tile_rows)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b, v = ctx.saved_tensors
        grads = compiled_module().kernel_t_matmul_backward(grad, a, b, v, ctx.tile_rows)
        return (*_as_inputs(grads, (a, b, v)), None)


def gaussian_kernel_compiled(a: Tensor, b: Tensor, tile_rows: int = 0) -> Tensor:
    out = _GaussianKernel.apply(_flat(a), _flat(b), tile_rows)
    return out.reshape(*a.shape[:-1], b.shape[-2])


def gaussian_kernel_matmul_compiled(a: Tensor, b: Tensor, w: Tensor, tile_rows: int = 0) -> Tensor:
    out = _KernelMatmul.apply(_flat(a), _flat(b), _flat(w), tile_rows)
    return out.reshape(*a.shape[:-1], w.shape[-1])


def gaussian_kernel_t_matmul_compiled(a: Tensor, b: Tensor, v: Tensor, tile_rows: int = 0) -> Tensor:
    out = _KernelTMatmul.apply(_flat(a), _flat(b), _flat(v), tile_rows)
    return out.reshape(*b.shape[:-1], v.shape[-1])

"""The compiled engine (soft_d2._C) as PyTorch custom operators: ``torch.ops.soft_d2.*``.

Each product is one operator with a schema, a fake (shape/dtype) implementation and an autograd
formula, so torch.compile, torch.export and FX see one node per call instead of an opaque
extension call (which would break Dynamo's graph). Operands are [batch*heads, rows, features];
results are float32 (float64 if any operand is), gradients come back in each input's own dtype.
The backward operators have no derivative of their own: first derivatives only.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .extension import compiled_module


def _engine():
    engine = compiled_module()
    if engine is None:  # dispatch never routes here without the extension; a direct call says why
        raise RuntimeError("torch.ops.soft_d2 needs the compiled soft_d2._C extension, which is not built "
                           "(bash tools/install.sh)")
    return engine


def _result_dtype(*operands: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in operands) else torch.float32


def _as_inputs(grads, inputs) -> tuple[Tensor, ...]:
    return tuple(g.to(x.dtype) for g, x in zip(grads, inputs))


def _like(x: Tensor) -> Tensor:
    return x.new_empty(x.shape)  # contiguous, as the engine returns it


# ------------------------------------------------------------------- G(a, b) (dense kernel)
@torch.library.custom_op("soft_d2::gaussian_kernel", mutates_args=())
def gaussian_kernel(a: Tensor, b: Tensor, tile_rows: int) -> Tensor:
    return _engine().gaussian_kernel_forward(a, b, tile_rows)


@gaussian_kernel.register_fake
def _(a, b, tile_rows):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=_result_dtype(a, b))


@torch.library.custom_op("soft_d2::gaussian_kernel_backward", mutates_args=())
def gaussian_kernel_backward(grad: Tensor, a: Tensor, b: Tensor, out: Tensor, tile_rows: int) -> tuple[Tensor, Tensor]:
    return _as_inputs(_engine().gaussian_kernel_backward(grad, a, b, out, tile_rows), (a, b))


@gaussian_kernel_backward.register_fake
def _(grad, a, b, out, tile_rows):
    return _like(a), _like(b)


def _kernel_setup(ctx, inputs, output):
    a, b, tile_rows = inputs
    ctx.save_for_backward(a, b, output)
    ctx.tile_rows = tile_rows


def _kernel_backward(ctx, grad):
    a, b, out = ctx.saved_tensors
    return (*gaussian_kernel_backward(grad, a, b, out, ctx.tile_rows), None)


gaussian_kernel.register_autograd(_kernel_backward, setup_context=_kernel_setup)


# ------------------------------------------------------------------------ G(a, b) @ w
@torch.library.custom_op("soft_d2::kernel_matmul", mutates_args=())
def kernel_matmul(a: Tensor, b: Tensor, w: Tensor, tile_rows: int) -> Tensor:
    return _engine().kernel_matmul_forward(a, b, w, tile_rows)


@kernel_matmul.register_fake
def _(a, b, w, tile_rows):
    return a.new_empty((a.shape[0], a.shape[1], w.shape[2]), dtype=_result_dtype(a, b, w))


@torch.library.custom_op("soft_d2::kernel_matmul_backward", mutates_args=())
def kernel_matmul_backward(grad: Tensor, a: Tensor, b: Tensor, w: Tensor,
                           tile_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    return _as_inputs(_engine().kernel_matmul_backward(grad, a, b, w, tile_rows), (a, b, w))


@kernel_matmul_backward.register_fake
def _(grad, a, b, w, tile_rows):
    return _like(a), _like(b), _like(w)


# ---------------------------------------------------------------------- G(a, b)^T @ v
@torch.library.custom_op("soft_d2::kernel_t_matmul", mutates_args=())
def kernel_t_matmul(a: Tensor, b: Tensor, v: Tensor, tile_rows: int) -> Tensor:
    return _engine().kernel_t_matmul_forward(a, b, v, tile_rows)


@kernel_t_matmul.register_fake
def _(a, b, v, tile_rows):
    return a.new_empty((a.shape[0], b.shape[1], v.shape[2]), dtype=_result_dtype(a, b, v))


@torch.library.custom_op("soft_d2::kernel_t_matmul_backward", mutates_args=())
def kernel_t_matmul_backward(grad: Tensor, a: Tensor, b: Tensor, v: Tensor,
                             tile_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    return _as_inputs(_engine().kernel_t_matmul_backward(grad, a, b, v, tile_rows), (a, b, v))


@kernel_t_matmul_backward.register_fake
def _(grad, a, b, v, tile_rows):
    return _like(a), _like(b), _like(v)


def _product_setup(ctx, inputs, output):
    a, b, x, tile_rows = inputs
    ctx.save_for_backward(a, b, x)
    ctx.tile_rows = tile_rows


def _matmul_backward(ctx, grad):
    return (*kernel_matmul_backward(grad, *ctx.saved_tensors, ctx.tile_rows), None)


def _t_matmul_backward(ctx, grad):
    return (*kernel_t_matmul_backward(grad, *ctx.saved_tensors, ctx.tile_rows), None)


kernel_matmul.register_autograd(_matmul_backward, setup_context=_product_setup)
kernel_t_matmul.register_autograd(_t_matmul_backward, setup_context=_product_setup)

"""The compiled engine's products on [..., rows, features] operands (any batch/head dims, flattened
to [batch*heads, rows, features] for the custom operators of library.py)."""
from __future__ import annotations

import math

from torch import Tensor

from . import library


def _flat(x: Tensor) -> Tensor:
    return x.reshape(math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1])


def gaussian_kernel_compiled(a: Tensor, b: Tensor, tile_rows: int = 0) -> Tensor:
    out = library.gaussian_kernel(_flat(a), _flat(b), tile_rows)
    return out.reshape(*a.shape[:-1], b.shape[-2])


def gaussian_kernel_matmul_compiled(a: Tensor, b: Tensor, w: Tensor, tile_rows: int = 0) -> Tensor:
    out = library.kernel_matmul(_flat(a), _flat(b), _flat(w), tile_rows)
    return out.reshape(*a.shape[:-1], w.shape[-1])


def gaussian_kernel_t_matmul_compiled(a: Tensor, b: Tensor, v: Tensor, tile_rows: int = 0) -> Tensor:
    out = library.kernel_t_matmul(_flat(a), _flat(b), _flat(v), tile_rows)
    return out.reshape(*b.shape[:-1], v.shape[-1])

"""Input checks shared by every path of the Gaussian-kernel ops, so that bad input gets the same
clear error (naming the tensor) whichever implementation runs.

inf and NaN are not rejected by default (checking needs a full pass and, on CUDA, a device sync):
a NaN in a row of ``a`` (or ``b``) makes that row (column) of G NaN, and NaN spreads through the
products to every output the row touches (G @ w: that output row; G^T @ v: every output). An inf
in a row makes the expanded squared distance inf - inf = NaN or +inf, so that row of G is NaN or 0
entry by entry (sign-dependent): meaningless either way. NaN/inf in w or v spread through the
products as in any matmul. ``check_finite=True`` on the public functions raises instead.
"""
from __future__ import annotations

from torch import Tensor
import torch


def _check_tensor(op: str, name: str, t: object) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() < 2:
        raise ValueError(f"{op}: {name} must have shape [..., rows, features], got {tuple(t.shape)}")


def check_operands(
    op: str, a: Tensor, b: Tensor, other: tuple[str, Tensor, str] | None = None
) -> None:
    """a [..., N, d], b [..., m, d]; ``other`` = (name, tensor, "a" | "b"): a [..., rows, e]
    operand whose rows match a's (N) or b's (m). Batch dims must be equal (no broadcasting)."""
    named = [("a", a), ("b", b)] + ([other[:2]] if other is not None else [])
    for name, t in named:
        _check_tensor(op, name, t)
    for name, t in named[1:]:
        if t.device != a.device:
            raise ValueError(f"{op}: {name} is on {t.device} but a is on {a.device}")
        if t.shape[:-2] != a.shape[:-2]:
            raise ValueError(
                f"{op}: {name} has batch dims {tuple(t.shape[:-2])} but a has {tuple(a.shape[:-2])}"
            )
    if b.shape[-1] != a.shape[-1]:
        raise ValueError(f"{op}: b has {b.shape[-1]} features but a has {a.shape[-1]}")
    if other is not None:
        name, t, rows_like = other
        ref = a if rows_like == "a" else b
        if t.shape[-2] != ref.shape[-2]:
            raise ValueError(f"{op}: {name} has {t.shape[-2]} rows but {rows_like} has {ref.shape[-2]}")


def check_finite(op: str, **tensors: Tensor) -> None:
    """Raise if any tensor holds inf or NaN (opt-in: costs a pass and a device sync)."""
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{op}: {name} contains inf or NaN")

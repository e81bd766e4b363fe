"""Shape arithmetic that stays valid when sizes are symbolic (torch.export / torch.compile with
dynamic height and width): no Python branch on a size, which would pin the traced graph to the
example's side of it. On plain ints both are the ordinary Python arithmetic."""
import math
from typing import List, Tuple

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true


@torch.jit.ignore  # Python-only; TorchScript keeps the call (and stops at the Newton solve, docs/DEPLOYMENT.md)
def known_equal(a: Tuple[int, int], b: Tuple[int, int]) -> bool:
    """True when the two sizes are equal and that is known without a shape guard.

    Eager sizes are ints, so this is plain ==. Symbolic sizes give False unless provably equal:
    callers use it only to skip an operation that is an identity at equal size (a resize or an
    adaptive pool to the input's own size), so running it anyway is exact, and the traced graph
    serves every size instead of being guarded against the one where the skip applies.
    """
    return len(a) == len(b) and all(_known_true(x == y) for x, y in zip(a, b))


def _known_true(condition) -> bool:
    if isinstance(condition, torch.SymBool):
        return statically_known_true(condition)
    return bool(condition)  # a bool, or a 0-dim tensor of sizes recorded by torch.jit.trace


@torch.jit.ignore
def is_symbolic(sizes: List[int]) -> bool:
    return any(isinstance(s, torch.SymInt) for s in sizes)


def exporting_symbolic(sizes: List[int]) -> bool:
    """True while torch.export traces these sizes as symbols (dynamic height and width)."""
    return is_symbolic(sizes) and torch.compiler.is_exporting()


@torch.jit.ignore
def size_max(a: int, b: int) -> int:
    """max() of two sizes without a guard on which one is larger (torch.sym_max when symbolic)."""
    return torch.sym_max(a, b) if is_symbolic([a, b]) else max(a, b)


# Integer arithmetic on plain ints, SymInts or 0-dim int64 tensors (the exported landmark grid)
def int_min(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)


def int_max(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return max(a, b)


def int_sqrt(n):
    """floor(sqrt(n)) for 0 <= n < 2**52: the floor of the float64 square root is exact there (a
    square stays exact; k**2 - 1 is more than half a unit of the last place below k)."""
    if isinstance(n, torch.Tensor):
        return n.double().sqrt().floor().long()
    return math.floor(math.sqrt(n))  # also on SymInts (torch.compile), unlike math.isqrt


def int_where(condition, a, b):
    if isinstance(condition, torch.Tensor):
        return torch.where(condition, a, b)
    return a if condition else b

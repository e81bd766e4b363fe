"""Shape arithmetic that stays valid when sizes are symbolic (torch.export / torch.compile with
dynamic height and width): no Python branch on a size, which would pin the traced graph to the
example's side of it. On plain ints both are the ordinary Python arithmetic."""
from typing import Tuple

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true


@torch.jit.ignore  # Python-only; TorchScript keeps the call (and stops at the Newton solve, README)
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
def size_max(a: int, b: int) -> int:
    """max() of two sizes without a guard on which one is larger (torch.sym_max when symbolic)."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return torch.sym_max(a, b)
    return max(a, b)

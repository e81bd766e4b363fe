"""Shape arithmetic that stays valid when sizes are symbolic (torch.export / torch.compile with
dynamic height and width): no Python branch on a size, which would pin the traced graph to the
example's side of it. On plain ints both are the ordinary Python arithmetic."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true


def known_equal(a: Sequence, b: Sequence) -> bool:
    """True when the two sizes are equal and that is known without a shape guard.

    Eager sizes are ints, so this is plain ==. Symbolic sizes give False unless provably equal:
    callers use it only to skip an operation that is an identity at equal size (a resize or an
    adaptive pool to the input's own size), so running it anyway is exact, and the traced graph
    serves every size instead of being guarded against the one where the skip applies.
    """
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b))


def size_max(a, b):
    """max() of two sizes without a guard on which one is larger (torch.sym_max when symbolic)."""
    return torch.sym_max(a, b)

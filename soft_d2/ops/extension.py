"""Finds the compiled extension soft_d2._C once and says, once, when ``auto`` falls back."""
from __future__ import annotations

import warnings
from types import ModuleType

_C: ModuleType | None
try:
    from .. import _C
    _LOAD_ERROR: str | None = None
except ImportError as err:  # not built, or built against another torch
    _C = None
    _LOAD_ERROR = str(err)

_warned = False


def compiled_module() -> ModuleType | None:
    return _C


def load_error() -> str | None:
    return _LOAD_ERROR


def warn_fallback_once() -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        "soft_d2: the compiled Gaussian-kernel op (soft_d2._C) is not available "
        f"({_LOAD_ERROR}); kernel_method='auto' uses the pure-PyTorch path (same results, slower "
        "on large inputs). Build it with `bash tools/install.sh`.",
        RuntimeWarning,
        stacklevel=3,
    )

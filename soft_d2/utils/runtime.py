"""Runtime settings both trainers read the same way: autocast precision, Gaussian-kernel method,
CPU threads per process and the optimizer's fused kernel. One spelling each; the other spelling
users already have in configs is accepted as an alias."""
from __future__ import annotations

import os

import torch

AMP_PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}  # torch's (and timm's) names
AMP_ALIASES = {"bf16": "bfloat16", "fp16": "float16"}

# "compiled": soft_d2._C; "torch": plain PyTorch; "auto": compiled where built.
KERNEL_METHODS = ("auto", "compiled", "torch")
KERNEL_ALIASES = {"cuda": "compiled"}  # the release's name for its compiled kernel


def amp_precision(name: str, key: str) -> str:
    """The canonical name of an autocast precision; ``key`` names the setting in the error."""
    canonical = AMP_ALIASES.get(name, name)
    if canonical not in AMP_PRECISIONS:
        raise ValueError(f"{key} must be one of {sorted(AMP_PRECISIONS)} (or {sorted(AMP_ALIASES)}), got {name!r}")
    return canonical


def amp_dtype(name: str, key: str) -> torch.dtype:
    return AMP_PRECISIONS[amp_precision(name, key)]


def kernel_method(name: str, key: str) -> str:
    """The canonical Gaussian-kernel method (soft_d2.ops); ``key`` names the setting in the error."""
    canonical = KERNEL_ALIASES.get(name, name)
    if canonical not in KERNEL_METHODS:
        raise ValueError(f"{key} must be one of {list(KERNEL_METHODS)} (or {sorted(KERNEL_ALIASES)}), got {name!r}")
    return canonical


def share_cpu_threads(local_processes: int) -> None:
    """Give each of ``local_processes`` CPU processes on one machine its share of the cores:
    oversubscribing them slows every process down."""
    if local_processes > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))


def fused_optimizer_options(name: str) -> dict:
    """Adam(W) runs fused, one kernel for all tensors: the per-tensor loop took ~20% of a small CPU step."""
    return {"fused": True} if name.lower() in ("adam", "adamw") else {}

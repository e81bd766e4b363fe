"""A multi-threaded CPU kernel for torchvision's RoIAlign backward.

torchvision's CPU kernel of ``torchvision::_roi_align_backward`` runs on one thread. The compiled
``soft_d2._C.roi_align_backward_cpu`` computes the same function, parallel over channels, with
each channel's sums accumulated in the same order as torchvision's kernel, so its results are
bit-for-bit torchvision's (float32, float64 and float16, the dtypes torchvision's kernel takes).

:func:`use_parallel_roi_align_backward` registers it as the CPU kernel of that operator for the
whole process: ``torchvision.ops.roi_align`` and every other caller whose autograd goes through
``torch.ops.torchvision._roi_align_backward`` then use it for CPU tensors. Other devices keep
torchvision's kernels (only the CPU dispatch key is registered).
``SOFT_D2_PARALLEL_ROI_ALIGN=0`` turns the registration off.
"""
from __future__ import annotations

import os
import warnings

import torch

from .extension import compiled_module

ENV_VAR = "SOFT_D2_PARALLEL_ROI_ALIGN"
OP_NAME = "_roi_align_backward"

# The registration lives as long as this Library object; deleting it restores torchvision's kernel.
_LIBRARY: torch.library.Library | None = None


def _roi_align_backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                        channels, height, width, sampling_ratio, aligned):
    return compiled_module().roi_align_backward_cpu(
        grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
        width, sampling_ratio, aligned)


def _torchvision_op_available() -> bool:
    try:
        import torchvision  # noqa: F401 - loads torchvision's operators
    except ImportError:
        return False
    return hasattr(torch.ops.torchvision, OP_NAME)


def parallel_roi_align_backward_active() -> bool:
    """Whether this process's CPU kernel of torchvision's RoIAlign backward is the compiled one."""
    return _LIBRARY is not None


def use_parallel_roi_align_backward() -> bool:
    """Register the compiled multi-threaded kernel as the CPU kernel of torchvision's RoIAlign
    backward, for the whole process. Returns whether it is registered: False (and nothing done)
    when ``SOFT_D2_PARALLEL_ROI_ALIGN=0``, when soft_d2._C is not built (or predates the kernel),
    or when torchvision's operator is missing. Calling it again does nothing."""
    global _LIBRARY
    if _LIBRARY is not None:
        return True
    if os.environ.get(ENV_VAR, "1") == "0":
        return False
    ext = compiled_module()
    if ext is None or not hasattr(ext, "roi_align_backward_cpu"):
        return False
    if not _torchvision_op_available():
        return False
    library = torch.library.Library("torchvision", "IMPL")
    with warnings.catch_warnings():
        # Replacing torchvision's CPU kernel is the point; torch may say so, once per process.
        warnings.filterwarnings("ignore",
                                message=r"(?s).*Overriding a previously registered kernel")
        library.impl(OP_NAME, _roi_align_backward, "CPU")
    _LIBRARY = library
    return True

"""The size of SOFT's landmark grid: the query-grid size the stride-s landmark convolution runs
on, faithful (the release's floor(H/s) x floor(W/s)) or under a landmark bound, as plain ints, as
symbolic sizes (torch.compile) and as tensor arithmetic inside an exported program; and the
adaptive average pooling that brings the query grid to that size."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .shapes import exporting_symbolic, int_max, int_min, int_sqrt, int_where, is_symbolic, size_max


def bounded_landmark_grid(grid_h, grid_w, max_landmarks):
    """A landmark grid of at most max_landmarks cells with the aspect ratio of grid_h x grid_w.

    Both sides are scaled by sqrt(max_landmarks / (grid_h * grid_w)) and rounded down, so each is
    within one cell of the exact ratio; a short side that would round to 0 becomes 1, and the long
    side then takes as many cells as the bound allows. In integers floor(side * scale) is
    isqrt(max_landmarks * side // other side), exact at whole numbers where the float product
    can fall just below. Arguments are ints or 0-dim int64 tensors (exported_landmark_input_size).
    """
    short, long = int_min(grid_h, grid_w), int_max(grid_h, grid_w)
    a = int_min(int_max(int_sqrt(max_landmarks * short // long), 1), short)
    b = int_max(int_min(int_min(int_sqrt(max_landmarks * long // short), max_landmarks // a), long), 1)
    tall = grid_h > grid_w
    return int_where(tall, b, a), int_where(tall, a, b)


@torch.jit.ignore  # Python-only size arithmetic (TorchScript stops at the Newton solve, docs/DEPLOYMENT.md)
def landmark_input_size(height: int, width: int, sr_ratio: int, max_landmarks: Optional[int]) -> Tuple[int, int]:
    """The query-grid size the stride-s landmark convolution is applied to (see ConvLandmarks):
    the grid itself stretched to at least s per side, or above the bound s times the bounded
    landmark grid. Branch-free under torch.export, so one program serves every size."""
    s = sr_ratio
    unbounded = size_max(height, s), size_max(width, s)
    if max_landmarks is None:
        return unbounded
    if exporting_symbolic([height, width]):
        return exported_landmark_input_size(height, width, s, max_landmarks)
    rows, cols = max(height // s, 1), max(width // s, 1)
    if rows * cols <= max_landmarks:
        return unbounded
    rows, cols = bounded_landmark_grid(rows, cols, max_landmarks)
    return rows * s, cols * s


def exported_landmark_input_size(height: int, width: int, sr_ratio: int, max_landmarks: int) -> Tuple[int, int]:
    """landmark_input_size of symbolic sizes as int64 tensor arithmetic, read back as two sizes
    the exporter treats as data (unbacked): the bounded grid is piecewise in the image size, and
    as a symbolic expression every later shape check would guard on its pieces."""
    s = sr_ratio
    hw = torch.stack([torch.full((), height, dtype=torch.int64), torch.full((), width, dtype=torch.int64)])
    grid = (hw // s).clamp(min=1)
    bound = torch.full((), max_landmarks, dtype=torch.int64)  # a tensor operand on both sides of //
    bounded = torch.stack(bounded_landmark_grid(grid[0], grid[1], bound)) * s
    size = torch.where(grid.prod() > bound, bounded, hw.clamp(min=s))
    out_h, out_w = size.tolist()
    for out, side in ((out_h, height), (out_w, width)):
        torch._check(out >= s)
        torch._check(out <= size_max(side, s))
    return out_h, out_w


def adaptive_average_matrix(size: int, out_size: int, like: Tensor) -> Tensor:
    """[out_size, size]: row i averages inputs floor(i size / out) .. ceil((i + 1) size / out) - 1,
    adaptive average pooling along one axis as a matrix (it repeats inputs when enlarging)."""
    i = torch.arange(out_size, device=like.device).unsqueeze(1)
    j = torch.arange(size, device=like.device)
    start, end = i * size // out_size, ((i + 1) * size + out_size - 1) // out_size
    inside = (j >= start) & (j < end)
    return inside.to(like.dtype) / (end - start).to(like.dtype)


@torch.jit.ignore
def adaptive_average(grid: Tensor, size: Tuple[int, int]) -> Tensor:
    """F.adaptive_avg_pool2d of a [..., H, W] grid. On plain sizes the pooling op itself; on
    symbolic sizes two averaging matrices, because the pooling op's decomposition branches on
    whether the sizes divide (a guard that pins an export to one size)."""
    height, width = grid.shape[-2:]
    if not is_symbolic([height, width, size[0], size[1]]):
        return F.adaptive_avg_pool2d(grid, size)
    rows = adaptive_average_matrix(height, size[0], grid)
    cols = adaptive_average_matrix(width, size[1], grid)
    return rows @ grid @ cols.transpose(0, 1)

"""Attention layers of SOFT: the softmax-free attention of stages 1-3 and the softmax attention
(with class token) of stage 4."""
from __future__ import annotations

import math
from functools import partial

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .landmark_grid import adaptive_average, landmark_input_size
from .shapes import known_equal


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, N, C] -> [B, heads, N, C / heads] (head-major channel order)."""
    return x.view(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, heads, N, d] -> [B, N, heads * d]."""
    return x.transpose(1, 2).flatten(2)


def landmark_query_grid(q: Tensor, height: int, width: int, sr_ratio: int, max_landmarks: int | None) -> Tensor:
    """[B, heads, N, d] queries -> the [B*heads, d, H', W'] grid the landmark convolution runs on
    (ConvLandmarks: stretched to at least sr_ratio per side, pooled under max_landmarks)."""
    b, h, n, d = q.shape
    grid = q.reshape(b * h, n, d).transpose(1, 2).reshape(b * h, d, height, width)
    size = landmark_input_size(height, width, sr_ratio, max_landmarks)
    if not known_equal(size, (height, width)):
        # adaptive pooling: averages when shrinking, repeats rows/columns when stretching
        grid = adaptive_average(grid, size)
    return grid


def soft_attention_product(q: Tensor, landmarks: Tensor, v: Tensor, normalized: bool, newton_max_iter: int,
                           newton_numerics: str, kernel_method: str) -> Tensor:
    """G(Q, L) @ M @ (G(Q, L)^T V), M = newton_pinv(G(L, L)) (D^-1/2 on both sides for SOFT-Norm),
    applied to the [B, h, m, d] summary without forming M."""
    k2 = ops.gaussian_kernel(landmarks, landmarks, kernel_method)
    solve = partial(ops.newton_solve, k2, max_iter=newton_max_iter, numerics=newton_numerics)
    if normalized:
        d_inv_sqrt = k2.sum(-1).sqrt().reciprocal().unsqueeze(-1)  # [B, h, m, 1]
        middle = lambda summary: d_inv_sqrt * solve(d_inv_sqrt * summary)  # noqa: E731
    else:
        middle = solve
    return ops.nystrom_attention(q, landmarks, v, middle, kernel_method)


# Shape-dependent control flow and the op dispatch: under FX symbolic tracing one call node each,
# run with real tensors (torch.compile and torch.export trace through them).
torch.fx.wrap("landmark_query_grid")
torch.fx.wrap("soft_attention_product")


class ConvLandmarks(nn.Module):
    """Landmarks from queries: a stride-s convolution over the query grid, then LayerNorm + GELU.

    One convolution is shared by all heads (it acts on the d channels of each head). As released,
    the grid rounds down: m = floor(H/s) * floor(W/s).
    - A grid side shorter than s is first stretched to s (nearest-neighbour repetition), so any
      image gives at least one landmark along it (the release crashes there).
    - With ``max_landmarks`` set and m above it, the query grid is first average-pooled to
      (s * rows, s * cols), rows x cols <= max_landmarks with the grid's aspect ratio, so the
      released stride-s convolution still sees the scale it was trained on, only coarser.
    Below those limits the function is exactly the release's.
    """

    def __init__(self, head_dim: int, sr_ratio: int):
        super().__init__()
        self.sr_ratio = sr_ratio
        self.max_landmarks: int | None = None  # set by SoftVisionTransformer.set_max_landmarks
        self.conv = nn.Conv2d(head_dim, head_dim, kernel_size=sr_ratio, stride=sr_ratio, bias=False)
        self.norm = nn.LayerNorm(head_dim, eps=1e-5)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The query-grid size the stride-s convolution is applied to."""
        return landmark_input_size(height, width, self.sr_ratio, self.max_landmarks)

    def forward(self, q: Tensor, hw: tuple[int, int]) -> Tensor:
        grid = landmark_query_grid(q, hw[0], hw[1], self.sr_ratio, self.max_landmarks)
        lm = self.conv(grid).flatten(2).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1, q.shape[3])
        return F.gelu(self.norm(lm))


class SoftAttention(nn.Module):
    """Softmax-free attention (spec §3): K = Q, Gaussian kernel, Nystrom-style low-rank product

        out = G(Q, L) @ M @ (G(Q, L)^T V) + conv(V),   M = newton_pinv(G(L, L))

    with M = D^-1/2 newton_pinv(G(L, L)) D^-1/2 for SOFT-Norm (D = row sums of G(L, L)).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        v_conv_size: int,
        normalized: bool = False,
        newton_numerics: str = "regularized",
        newton_max_iter: int = 20,
        kernel_method: str = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        if newton_numerics not in ops.NEWTON_NUMERICS:
            raise ValueError(f"newton_numerics must be one of {ops.NEWTON_NUMERICS}, got {newton_numerics!r}")
        if kernel_method not in ops.KERNEL_METHODS:
            raise ValueError(f"kernel_method must be one of {ops.KERNEL_METHODS}, got {kernel_method!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.normalized = normalized
        self.newton_numerics = newton_numerics
        self.newton_max_iter = newton_max_iter
        self.kernel_method = kernel_method
        self.q = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        # sr_ratio 1: every query is a landmark (exact, quadratic); no landmark layer.
        self.landmarks = ConvLandmarks(self.head_dim, sr_ratio) if sr_ratio > 1 else None
        self.v_conv = nn.Conv2d(
            num_heads, num_heads, v_conv_size, padding=v_conv_size // 2, groups=num_heads, bias=False
        )
        self.proj = nn.Linear(dim, dim)

    def _conv_v(self, v: Tensor, hw: tuple[int, int]) -> Tensor:
        """Depthwise k x k conv of V over the grid, one filter per head shared by its d channels.

        Runs on the [B, N, C] projection output viewed channels-last as [B, C, H, W] (no copy),
        with each head's filter repeated over its d channels: the same sums as the release's
        conv over V arranged as [B*d, heads, H, W], without the two transposing copies.
        """
        c = self.num_heads * self.head_dim
        grid = v.view(v.shape[0], hw[0], hw[1], c).permute(0, 3, 1, 2)
        weight = self.v_conv.weight.repeat_interleave(self.head_dim, dim=0)  # [C, 1, k, k]
        out = F.conv2d(grid, weight, padding=self.v_conv.padding, groups=c)
        return out.permute(0, 2, 3, 1).reshape(v.shape)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        v_proj = self.v(x)
        q = split_heads(self.q(x), self.num_heads) / math.sqrt(math.sqrt(self.head_dim))
        v = split_heads(v_proj, self.num_heads)
        lm = q if self.landmarks is None else self.landmarks(q, hw)
        out = soft_attention_product(q, lm, v, self.normalized, self.newton_max_iter, self.newton_numerics,
                                     self.kernel_method)
        out = merge_heads(out).to(v_proj.dtype) + self._conv_v(v_proj, hw)
        return self.proj(out)


class SoftmaxAttention(nn.Module):
    """Multi-head softmax self-attention of stage 4 (PVT style, no spatial reduction)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        q = split_heads(self.q(x), self.num_heads)
        kv = self.kv(x).view(x.shape[0], x.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj_drop(self.proj(merge_heads(out)))

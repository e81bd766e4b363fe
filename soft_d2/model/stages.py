"""Stages of the SOFT pyramid: convolutional downsampling, learned position embedding, blocks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import SoftBlock, SoftmaxBlock


class ConvBnRelu(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)


class ConvStem(nn.Sequential):
    """Stage-1 patch embedding, stride 4: conv3x3 s2 (3->w), conv3x3 s1 (w->w), conv3x3 s2 (w->C1)."""

    def __init__(self, in_chs: int, out_chs: int, width: int = 32):
        super().__init__()
        self.conv1 = ConvBnRelu(in_chs, width, stride=2)
        self.conv2 = ConvBnRelu(width, width, stride=1)
        self.conv3 = ConvBnRelu(width, out_chs, stride=2)


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """[1, gh*gw, C] embedding of a gh x gw grid, bilinearly resized (align_corners=False) to size."""
    if tuple(grid) == tuple(size):
        return pos_embed
    c = pos_embed.shape[-1]
    g = pos_embed.reshape(1, grid[0], grid[1], c).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=size, mode="bilinear", align_corners=False)
    return g.flatten(2).transpose(1, 2)


class SoftStage(nn.Module):
    """Downsample -> + position embedding -> SOFT blocks; NCHW in, NCHW out."""

    def __init__(self, downsample: nn.Module, dim: int, pos_grid: tuple[int, int], blocks: list[SoftBlock],
                 pos_drop: float = 0.0):
        super().__init__()
        self.downsample = downsample
        self.pos_grid = tuple(pos_grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid[0] * pos_grid[1], dim))
        self.pos_drop = nn.Dropout(pos_drop)
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = self.pos_drop(x + resize_pos_embed(self.pos_embed, self.pos_grid, (h, w)))
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, (h, w), use_reentrant=False)
            else:
                x = blk(x, (h, w))
        return x.transpose(1, 2).reshape(b, c, h, w)


class SoftmaxStage(nn.Module):
    """Last stage: downsample, prepend the class token, position embedding (its first entry is the
    class token's, never resized), softmax blocks; NCHW in, NCHW out (the patch tokens), like every
    stage. ``forward_tokens`` also returns the class token, for the classifier."""

    def __init__(self, downsample: nn.Module, dim: int, pos_grid: tuple[int, int], blocks: list[SoftmaxBlock],
                 pos_drop: float = 0.0):
        super().__init__()
        self.downsample = downsample
        self.pos_grid = tuple(pos_grid)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid[0] * pos_grid[1], dim))
        self.pos_drop = nn.Dropout(pos_drop)
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """NCHW -> tokens [B, 1 + h*w, C] (class token first) and the grid (h, w)."""
        x = self.downsample(x)
        b, c, h, w = x.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        pos = torch.cat(
            [self.pos_embed[:, :1], resize_pos_embed(self.pos_embed[:, 1:], self.pos_grid, (h, w))], dim=1
        )
        x = self.pos_drop(x + pos)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x, (h, w)

    def forward(self, x: Tensor) -> Tensor:
        tokens, (h, w) = self.forward_tokens(x)
        return tokens_to_map(tokens[:, 1:], h, w)


def tokens_to_map(tokens: Tensor, h: int, w: int) -> Tensor:
    """[B, h*w, C] tokens -> [B, C, h, w]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

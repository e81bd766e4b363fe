"""Stages of the SOFT pyramid: convolutional downsampling, learned position embedding, blocks."""
from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import SoftBlock, SoftmaxBlock
from .shapes import known_equal


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
    if known_equal(grid, size):
        return pos_embed
    c = pos_embed.shape[-1]
    g = pos_embed.reshape(1, grid[0], grid[1], c).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=size, mode="bilinear", align_corners=False)
    return map_to_tokens(g)


# Under FX symbolic tracing the grid size is a Proxy: one call node, run with the real size.
torch.fx.wrap("resize_pos_embed")


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
        h, w = x.shape[2], x.shape[3]  # indexed, not unpacked: FX traces shapes as Proxies
        x = map_to_tokens(x)
        x = self.pos_drop(x + resize_pos_embed(self.pos_embed, self.pos_grid, (h, w)))
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, (h, w), use_reentrant=False)
            else:
                x = blk(x, (h, w))
        return tokens_to_map(x, h, w)


class SoftmaxStage(nn.Module):
    """Last stage: downsample, prepend the class token, position embedding (its first entry is the
    class token's, never resized), softmax blocks; NCHW in, NCHW out (the patch tokens), like every
    stage. ``return_class_token=True`` also returns the class token's output, for the classifier."""

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
        h, w = x.shape[2], x.shape[3]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), map_to_tokens(x)], dim=1)
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

    def forward(self, x: Tensor, return_class_token: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The patch tokens as a map [B, C, h, w] (and the class token's output [B, C]). The map is
        the stage's last operation, so FX feature extraction of "stages.3" takes it."""
        tokens, (h, w) = self.forward_tokens(x)
        class_token = tokens[:, 0]
        grid = tokens_to_map(tokens[:, 1:], h, w)
        return (grid, class_token) if return_class_token else grid


def tokens_to_map(tokens: Tensor, h: int, w: int) -> Tensor:
    """[B, h*w, C] tokens -> [B, C, h, w]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def map_to_tokens(grid: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h*w, C] tokens."""
    return grid.flatten(2).transpose(1, 2)


def join_class_token(class_token: Tensor, grid: Tensor) -> Tensor:
    """Class token [B, C] and patch map [B, C, h, w] -> tokens [B, 1 + h*w, C] (class token first)."""
    return torch.cat([class_token.unsqueeze(1), map_to_tokens(grid)], dim=1)

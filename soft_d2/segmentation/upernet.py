"""UperNet decode head (Xiao et al., ECCV 2018, "Unified Perceptual Parsing") and the auxiliary
FCN head, as plain PyTorch modules (no Detectron2; the wrapper in head.py adds losses and config).

UperNet over a four-stage pyramid (strides 4, 8, 16, 32):
- a pyramid pooling module (PPM, PSPNet) on the last stage: the map is average-pooled to a few grid
  sizes, each pooled map is projected and upsampled back, and all are fused with the map itself;
  the result is the top of the feature pyramid;
- an FPN: 1x1 lateral projections of the other stages, a top-down pathway that adds each
  upsampled coarser level to the finer one, and a 3x3 conv on each merged level;
- fusion: every level is upsampled to the finest stride, concatenated and fused by a 3x3 conv;
  dropout and a 1x1 classifier give logits at the finest stride.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NormFactory = Callable[[int], nn.Module]


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _classifier(in_channels: int, num_classes: int, init_std: float) -> nn.Conv2d:
    """1x1 conv to logits, weights ~ N(0, init_std^2), zero bias.

    The gradient reaching the decoder is W^T (p - y): with a small std (0.01, the common recipe for
    512-channel decoders and 160k steps) the layers below learn slowly until W has grown; a narrow
    decoder on a short schedule wants std ~ 1/sqrt(in_channels) (unit-variance logits)."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=init_std)
    nn.init.zeros_(conv.bias)
    return conv


class ConvNormAct(nn.Sequential):
    """Conv (no bias when normalized) -> norm -> ReLU: the building block of both heads."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: NormFactory | None):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None)
        layers = [conv] + ([norm(out_channels)] if norm is not None else []) + [nn.ReLU(inplace=True)]
        super().__init__(*layers)


class PyramidPooling(nn.Module):
    """PPM: pooled context at several grid sizes, concatenated with the input and fused by a 3x3 conv."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int], norm: NormFactory | None):
        super().__init__()
        if not pool_scales or any(int(s) < 1 for s in pool_scales):
            raise ValueError(f"pool scales must be positive grid sizes, got {list(pool_scales)}")
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(in_channels, channels, 1, norm)) for s in self.pool_scales)
        self.bottleneck = ConvNormAct(in_channels + len(self.pool_scales) * channels, channels, 3, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [_resize(branch(x), size) for branch in self.branches]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperNetDecoder(nn.Module):
    """Logits at the stride of the finest input map, from maps ordered fine to coarse."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), norm: NormFactory | None = nn.BatchNorm2d,
                 dropout: float = 0.1, classifier_std: float = 0.01):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"UperNet fuses a pyramid: needs at least 2 input maps, got {len(in_channels)}")
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, norm)
        self.laterals = nn.ModuleList(ConvNormAct(c, channels, 1, norm) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, 3, norm) for _ in in_channels[:-1])
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = _classifier(channels, num_classes, classifier_std)
        self.num_inputs = len(in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} maps (fine to coarse), got {len(features)}")
        # Top-down: start from the PPM output on the coarsest map, add it into each finer lateral.
        merged = [self.ppm(features[-1])]
        for lateral, x in zip(reversed(self.laterals), reversed(features[:-1])):
            top = merged[0]
            merged.insert(0, lateral(x) + _resize(top, x.shape[-2:]))
        # 3x3 convs remove the upsampling aliasing of the merged levels (not needed on the PPM output).
        outs = [conv(m) for conv, m in zip(self.smooth, merged[:-1])] + [merged[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary head: conv(s) on one intermediate map, dropout, 1x1 classifier (deep supervision)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 norm: NormFactory | None = nn.BatchNorm2d, dropout: float = 0.1, classifier_std: float = 0.01):
        super().__init__()
        convs = [ConvNormAct(in_channels if i == 0 else channels, channels, 3, norm) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = _classifier(channels if num_convs else in_channels, num_classes, classifier_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.convs(x)))

"""Transformer blocks: the post-norm SOFT block (stages 1-3) and the pre-norm softmax block
(stage 4)."""
from __future__ import annotations

import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from .attention import SoftAttention, SoftmaxAttention

SOFT_BLOCK_DROP_MODES = ("dropout", "drop_path")


def residual_drop(mode: str, p: float) -> nn.Module:
    """The residual-branch drop of a SOFT block: elementwise Dropout (the release's) or DropPath,
    timm's per-sample stochastic depth (kept samples scaled by 1 / (1 - p))."""
    if mode not in SOFT_BLOCK_DROP_MODES:
        raise ValueError(f"soft_block_drop must be one of {SOFT_BLOCK_DROP_MODES}, got {mode!r}")
    if p == 0.0:
        return nn.Identity()
    return nn.Dropout(p) if mode == "dropout" else DropPath(p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, approximate_gelu: bool, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.gelu = "tanh" if approximate_gelu else "none"
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(F.gelu(self.fc1(x), approximate=self.gelu))
        return self.drop(self.fc2(x))


class SoftBlock(nn.Module):
    """y = LN(x + drop(Attn(x))); out = LN(y + drop(MLP(y))), MLP with tanh-GELU (spec §2).

    ``drop`` is the release's elementwise Dropout at this block's stochastic-depth rate
    (``soft_block_drop="dropout"``) or true stochastic depth (``"drop_path"``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        v_conv_size: int,
        drop: float = 0.0,
        soft_block_drop: str = "dropout",
        **attention_options,
    ):
        super().__init__()
        self.attn = SoftAttention(dim, num_heads, sr_ratio, v_conv_size, **attention_options)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate_gelu=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.drop1 = residual_drop(soft_block_drop, drop)
        self.drop2 = residual_drop(soft_block_drop, drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.norm1(x + self.drop1(self.attn(x, hw)))
        return self.norm2(x + self.drop2(self.mlp(x)))


class SoftmaxBlock(nn.Module):
    """x = x + DropPath(Attn(LN(x))); x = x + DropPath(MLP(LN(x))), exact GELU, LN eps 1e-6."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SoftmaxAttention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate_gelu=False, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

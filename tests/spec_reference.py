"""Naive float64 references of SOFT written from the model's description (the spec and the
README's bounded-landmark rule): explicit loops over images, heads and grid cells, dense matrices,
the release's multiplication order, Python control flow for the halving. Shared by the tests that
compare the model with them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def naive_gaussian(a, b):
    # [n, d], [m, d] -> exp(-||a_i - b_j||^2 / 2) by explicit differences
    diff = a[:, None, :] - b[None, :, :]
    return torch.exp(-(diff**2).sum(-1) / 2)


def naive_newton_regularized(a, iters):
    m = a.shape[-1]
    alpha = 0.9 * 2 / a.sum(-1).max() ** 2
    p = a + float(torch.tensor(0.01, dtype=torch.float32)) * torch.eye(m, dtype=a.dtype)
    v = alpha * p
    for _ in range(iters):
        v = 2 * v - v @ p @ v
    return v


def naive_newton_halving(a_heads, iters):
    """a_heads: [h, m, m] of ONE image; alpha and its halvings shared by that image's heads."""
    m = a_heads.shape[-1]
    eye = torch.eye(m, dtype=a_heads.dtype)
    alpha = 2 / a_heads.sum(-1).max() ** 2
    v = alpha * a_heads
    pnorm = (eye - a_heads @ v).abs().sum(-2).max()
    halvings = 0
    while pnorm > 1.01 and halvings < 10:
        alpha = alpha * 0.5
        v = alpha * a_heads
        pnorm = (eye - a_heads @ v).abs().sum(-2).max()
        halvings += 1
    for _ in range(iters):
        v = 2 * v - v @ a_heads @ v
    return v, halvings


def bounded_grid(height, width, s, bound):
    """The size the query grid is resampled to before the stride-s landmark convolution.

    The release's grid has rows x cols = floor(H/s) x floor(W/s) landmarks (a side shorter than s
    counts as s). Above the bound both sides are scaled by sqrt(bound / (rows * cols)) and rounded
    down (at least 1, and cols further capped so that rows x cols <= bound); the grid is then
    resampled to (s * rows, s * cols)."""
    rows, cols = max(height // s, 1), max(width // s, 1)
    if bound is None or rows * cols <= bound:
        return max(height, s), max(width, s)
    scale = math.sqrt(bound / (rows * cols))
    new_rows = max(1, math.floor(rows * scale))
    new_cols = max(1, min(math.floor(cols * scale), bound // new_rows))
    return s * new_rows, s * new_cols


def naive_adaptive_average(grid, out_h, out_w):
    """[d, H, W] -> [d, out_h, out_w]: cell (i, j) is the mean of input rows floor(i H / out_h) to
    ceil((i + 1) H / out_h) - 1 and the same for columns (repeats rows/columns when enlarging)."""
    d, height, width = grid.shape
    out = torch.empty(d, out_h, out_w, dtype=grid.dtype)
    for i in range(out_h):
        r0, r1 = (i * height) // out_h, -(-(i + 1) * height // out_h)
        for j in range(out_w):
            c0, c1 = (j * width) // out_w, -(-(j + 1) * width // out_w)
            out[:, i, j] = grid[:, r0:r1, c0:c1].mean(dim=(1, 2))
    return out


def naive_landmarks(q, hw, landmarks, bound=None):
    """Landmarks of one head's queries q [N, d]: resample (bounded mode), stride-s convolution by
    explicit patch sums (floor rule), LayerNorm, exact GELU -> [m, d]."""
    d = q.shape[1]
    height, width = hw
    s = landmarks.sr_ratio
    grid = q.t().reshape(d, height, width)
    size = bounded_grid(height, width, s, bound)
    if size != (height, width):
        grid = naive_adaptive_average(grid, *size)
    weight = landmarks.conv.weight  # [d_out, d_in, s, s]
    rows, cols = grid.shape[1] // s, grid.shape[2] // s
    out = []
    for i in range(rows):
        for j in range(cols):
            patch = grid[:, i * s:(i + 1) * s, j * s:(j + 1) * s]
            out.append(torch.einsum("ocuv,cuv->o", weight, patch))
    lm = torch.stack(out)
    return F.gelu(F.layer_norm(lm, (d,), landmarks.norm.weight, landmarks.norm.bias, 1e-5))


def naive_soft_block(block, x, hw, normalized, numerics, iters, bound=None):
    """One SOFT block, post-norm, written out per image and head in float64 (``bound``: the
    bounded-landmark mode)."""
    attn = block.attn
    h, d = attn.num_heads, attn.head_dim
    height, width = hw
    b, n, c = x.shape
    out = torch.zeros(b, n, c, dtype=x.dtype)
    for i in range(b):
        q_all = F.linear(x[i], attn.q.weight, attn.q.bias) / math.sqrt(math.sqrt(d))
        v_all = F.linear(x[i], attn.v.weight, attn.v.bias)
        k2s, k1s, vs = [], [], []
        for head in range(h):
            q = q_all[:, head * d:(head + 1) * d]  # [N, d]
            lm = naive_landmarks(q, hw, attn.landmarks, bound)
            k1s.append(naive_gaussian(q, lm))
            k2s.append(naive_gaussian(lm, lm))
            vs.append(v_all[:, head * d:(head + 1) * d])
        if numerics == "halving":
            invs, _ = naive_newton_halving(torch.stack(k2s), iters)
        else:
            invs = [naive_newton_regularized(k2, iters) for k2 in k2s]
        heads = []
        for head in range(h):
            inv = invs[head]
            if normalized:
                dmat = torch.diag(k2s[head].sum(-1) ** -0.5)
                inv = dmat @ inv @ dmat
            o = (k1s[head] @ inv) @ (k1s[head].t() @ vs[head])  # the release's order
            # depthwise conv: this head's filter applied to each of its d channels
            vgrid = vs[head].t().reshape(d, 1, height, width)
            weight = attn.v_conv.weight[head:head + 1]
            k = weight.shape[-1]
            o = o + F.conv2d(vgrid, weight, padding=k // 2).reshape(d, n).t()
            heads.append(o)
        y = F.linear(torch.cat(heads, dim=1), attn.proj.weight, attn.proj.bias)
        y = F.layer_norm(x[i] + y, (c,), block.norm1.weight, block.norm1.bias, 1e-5)
        hidden = F.linear(y, block.mlp.fc1.weight, block.mlp.fc1.bias)
        hidden = 0.5 * hidden * (1 + torch.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden**3)))
        z = F.linear(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias)
        out[i] = F.layer_norm(y + z, (c,), block.norm2.weight, block.norm2.bias, 1e-5)
    return out


def randomize_norms(module, gen):
    """LayerNorm weights/biases away from 1/0, so that a swapped or missing norm shows."""
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.data = 1 + 0.1 * torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype)
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype)

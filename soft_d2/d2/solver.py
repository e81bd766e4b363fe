"""Optimizer of SOFT detectors and segmenters: AdamW (or SGD) with parameter groups and gradient clipping.

Groups: backbone (SoftVisionTransformer) parameters take BASE_LR * BACKBONE_MULTIPLIER; norm layers take
WEIGHT_DECAY_NORM, SOFT's position embeddings and class token WEIGHT_DECAY_EMBED, biases
WEIGHT_DECAY_BIAS (when set), everything else WEIGHT_DECAY.
"""
from __future__ import annotations

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

from ..model import SoftVisionTransformer
from ..utils.runtime import fused_optimizer_options

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _embedding_names(model: nn.Module) -> set[str]:
    """Full names of the position embeddings and class tokens of every SOFT model inside."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, SoftVisionTransformer):
            own = {n for n, _ in module.named_parameters()}
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay() if n in own}
    return names


def build_param_groups(cfg, model: nn.Module) -> list[dict]:
    """One group per (lr, weight decay) combination; each group lists its parameter names."""
    base_lr, solver = cfg.SOLVER.BASE_LR, cfg.SOLVER
    embeddings = _embedding_names(model)
    # The pretrained bottom-up network: every parameter inside a SoftVisionTransformer.
    backbone = {id(p) for m in model.modules() if isinstance(m, SoftVisionTransformer) for p in m.parameters()}
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    groups: dict[tuple[float, float], dict] = {}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        lr = base_lr * (solver.BACKBONE_MULTIPLIER if id(param) in backbone else 1.0)
        if id(param) in norm_params:
            decay = solver.WEIGHT_DECAY_NORM
        elif name in embeddings:
            decay = solver.WEIGHT_DECAY_EMBED
        elif name.endswith(".bias") and solver.WEIGHT_DECAY_BIAS is not None:
            decay = solver.WEIGHT_DECAY_BIAS
        else:
            decay = solver.WEIGHT_DECAY
        group = groups.setdefault((lr, decay), {"params": [], "names": [], "lr": lr, "weight_decay": decay})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def _with_full_model_clipping(optimizer_cls: type, max_norm: float, norm_type: float) -> type:
    """Subclass whose step() first clips the norm of all gradients together (transformer practice)."""

    class FullModelClipped(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelClipped.__name__ = f"FullModelClipped{optimizer_cls.__name__}"
    return FullModelClipped


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    groups = build_param_groups(cfg, model)
    for group in groups:
        group.pop("names")
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, dict(betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.EPS,
                                              **fused_optimizer_options(name))
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, dict(momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        cls = _with_full_model_clipping(cls, clip.CLIP_VALUE, clip.NORM_TYPE)
        return cls(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)
    # "value" and "norm" (per parameter) are Detectron2's own clipping types.
    return maybe_add_gradient_clipping(cfg, cls)(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)

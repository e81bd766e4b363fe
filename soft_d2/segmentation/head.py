"""UperNet as a Detectron2 semantic-segmentation head (``MODEL.SEM_SEG_HEAD.NAME: "UperNetHead"``).

Follows the interface SemanticSegmentor expects: ``forward(features, targets)`` returns
``(logits at input resolution, {})`` at inference and ``(None, losses)`` in training. The model
math lives in upernet.py; this wrapper reads the config, upsamples logits to the padded input size
and computes the (ignore-aware) cross-entropy losses. The auxiliary FCN head only runs in training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .upernet import FCNHead, UperNetDecoder


def _norm_factory(norm: str):
    if not norm:
        return None
    try:
        get_norm(norm, 32)  # fail here, naming the key, rather than deep inside a module
    except KeyError:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.NORM {norm!r} is not a Detectron2 norm: use 'BN', 'SyncBN', "
                         f"'naiveSyncBN', 'GN' or '' (none)") from None
    return lambda channels: get_norm(norm, channels)


def cross_entropy_ignoring(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels; 0 (with a gradient) when a batch has none."""
    logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="sum")
    return total / (targets != ignore_value).sum().clamp(min=1)


@SEM_SEG_HEADS_REGISTRY.register()
class UperNetHead(nn.Module):
    def __init__(self, cfg, input_shape: dict[str, ShapeSpec]):
        super().__init__()
        h = cfg.MODEL.SEM_SEG_HEAD
        self.in_features = list(h.IN_FEATURES)
        missing = [f for f in self.in_features if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES {self.in_features}: {missing} not produced by the "
                             f"backbone (it gives {sorted(input_shape)}; see MODEL.SOFT.OUT_FEATURES)")
        strides = [input_shape[f].stride for f in self.in_features]
        if strides != sorted(strides):
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES must go from fine to coarse, got strides {strides}")
        self.output_stride = strides[0]  # logits come at the finest map's stride
        norm = _norm_factory(h.NORM)
        if not h.CLASSIFIER_INIT_STD > 0:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.CLASSIFIER_INIT_STD must be positive, got {h.CLASSIFIER_INIT_STD} "
                             f"(0.01: the common recipe; 1/sqrt(CONVS_DIM) for a narrow decoder on a short schedule)")
        self.ignore_value = h.IGNORE_VALUE
        self.loss_weight = h.LOSS_WEIGHT
        self.decoder = UperNetDecoder([input_shape[f].channels for f in self.in_features], h.NUM_CLASSES,
                                      channels=h.CONVS_DIM, pool_scales=h.POOL_SCALES, norm=norm, dropout=h.DROPOUT,
                                      classifier_std=h.CLASSIFIER_INIT_STD)
        self.aux_weight = h.AUX_LOSS_WEIGHT
        self.aux_feature = h.AUX_IN_FEATURE
        self.aux_head = None
        if self.aux_weight > 0:
            if self.aux_feature not in input_shape:
                raise ValueError(f"MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE {self.aux_feature!r} is not produced by the "
                                 f"backbone (it gives {sorted(input_shape)}); set AUX_LOSS_WEIGHT 0 to drop the head")
            self.aux_head = FCNHead(input_shape[self.aux_feature].channels, h.NUM_CLASSES, channels=h.AUX_CONVS_DIM,
                                    norm=norm, dropout=h.DROPOUT, classifier_std=h.CLASSIFIER_INIT_STD)

    def forward(self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None):
        logits = self.decoder([features[f] for f in self.in_features])
        if not self.training:
            # Back to the (padded) input size; SemanticSegmentor crops and resizes to the original.
            size = (logits.shape[-2] * self.output_stride, logits.shape[-1] * self.output_stride)
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False), {}
        if targets is None:
            raise ValueError("UperNetHead in training mode needs targets (each input dict needs 'sem_seg')")
        losses = {"loss_sem_seg": self.loss_weight * cross_entropy_ignoring(logits, targets, self.ignore_value)}
        if self.aux_head is not None:
            aux = self.aux_head(features[self.aux_feature])
            losses["loss_sem_seg_aux"] = self.aux_weight * cross_entropy_ignoring(aux, targets, self.ignore_value)
        return None, losses

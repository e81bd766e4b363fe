"""SOFT + FPN backbones of the detectors, registered in Detectron2's BACKBONE_REGISTRY:
``build_soft_fpn_backbone`` (Mask R-CNN, P2-P6) and ``build_retinanet_soft_fpn_backbone`` (P3-P7)."""
from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from ..d2.backbone import check_input_channels, soft_backbone_from_cfg


class SoftFPN(FPN):
    """Detectron2's FPN over a SOFT bottom-up; keeps SOFT's padding needs."""

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {**self.bottom_up.padding_constraints, "size_divisibility": self.size_divisibility}


def _check_in_features(cfg, needed: list[str]) -> None:
    missing = [f for f in needed if f not in cfg.MODEL.SOFT.OUT_FEATURES]
    if missing:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {needed} needs {missing} in MODEL.SOFT.OUT_FEATURES "
                         f"(got {list(cfg.MODEL.SOFT.OUT_FEATURES)})")


@BACKBONE_REGISTRY.register()
def build_soft_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """SOFT + FPN for Mask R-CNN: P2-P6 (P6 by max-pooling P5)."""
    check_input_channels(input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    _check_in_features(cfg, in_features)
    # Only the maps FPN reads are returned, so no output goes unused.
    bottom_up = soft_backbone_from_cfg(cfg, in_features)
    return SoftFPN(bottom_up=bottom_up, in_features=in_features, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
                   norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_retinanet_soft_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """SOFT + FPN for RetinaNet: P3-P7 (P6, P7 by stride-2 convs from res5, as for ResNet)."""
    check_input_channels(input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    _check_in_features(cfg, in_features)
    if "res5" not in in_features:
        raise ValueError(f"RetinaNet's P6/P7 are made from res5: MODEL.FPN.IN_FEATURES must include it, got {in_features}")
    bottom_up = soft_backbone_from_cfg(cfg, in_features)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    c5 = bottom_up.output_shape()["res5"].channels
    return SoftFPN(bottom_up=bottom_up, in_features=in_features, out_channels=out_channels,
                   norm=cfg.MODEL.FPN.NORM, top_block=LastLevelP6P7(c5, out_channels, "res5"),
                   fuse_type=cfg.MODEL.FPN.FUSE_TYPE)

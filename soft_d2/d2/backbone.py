"""SOFT as a Detectron2 backbone: a thin wrapper over the pure model and its registered builder.

What happens to the classification parts of the pure model (DDP without
find_unused_parameters needs every parameter to receive a gradient):
- class token: kept. It still takes part in stage-4 attention, as in ImageNet pretraining, so the
  patch tokens see the same context the released weights were trained with; its own output row
  is dropped from res5. It receives gradients through the attention of the patch tokens.
- final LayerNorm: reused on res5 (the stage-4 patch tokens). Stages 1-3 end in a post-norm, so
  all four maps leave the backbone normalized. Pruned when res5 is not requested.
- classification head: removed (a released checkpoint's ``head.*`` is reported as skipped).
- stages after the last requested feature are removed.
"""
from __future__ import annotations

import torch
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ..model import check_variant, create_soft
from .config import soft_model_kwargs

STAGE_NAMES = ("res2", "res3", "res4", "res5")
# The top-down sum of FPN needs stage grids that halve exactly: pad inputs to the largest stride.
SIZE_DIVISIBILITY = 32


def convert_stem_norm(model: nn.Module, norm: str) -> nn.Module:
    """Replace the BatchNorm2d layers of the patch embeddings by the requested kind."""
    if norm == "BN":
        return model
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    if norm == "SyncBN":
        # Detectron2's all-reduce BN works on GLOO (CPU) as well as NCCL.
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    sync = NaiveSyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum)
                    sync.load_state_dict(child.state_dict())
                    setattr(parent, name, sync)
        return model
    raise ValueError(f"MODEL.SOFT.STEM_NORM must be 'BN', 'FrozenBN' or 'SyncBN', got {norm!r}")


class SoftBackbone(Backbone):
    """Detectron2 Backbone returning the requested SOFT stage maps (res2..res5)."""

    def __init__(self, variant: str, out_features=STAGE_NAMES, stem_norm: str = "BN",
                 grad_checkpoint: bool = False, freeze_at: int = 0, **model_kwargs):
        super().__init__()
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"MODEL.SOFT.OUT_FEATURES must be a non-empty subset of {STAGE_NAMES}, got {list(out_features)}")
        self._out_features = [f for f in STAGE_NAMES if f in out_features]
        self._indices = [STAGE_NAMES.index(f) for f in self._out_features]
        model = create_soft(variant, num_classes=0, **model_kwargs)
        keep_norm = "res5" in self._out_features
        model.prune_intermediate_layers(self._indices, prune_norm=not keep_norm, prune_head=True)
        model.set_grad_checkpointing(grad_checkpoint)
        self.model = convert_stem_norm(model, stem_norm)
        self._apply_norm = keep_norm
        self._frozen = self.freeze(freeze_at)
        self._out_feature_strides = {f: 4 * 2 ** STAGE_NAMES.index(f) for f in self._out_features}
        self._out_feature_channels = {f: model.embed_dims[STAGE_NAMES.index(f)] for f in self._out_features}

    def freeze(self, freeze_at: int = 0) -> list[nn.Module]:
        """Detectron2's ``MODEL.BACKBONE.FREEZE_AT``, as for ResNet: 0 trains everything, 1
        freezes the stem (stage 1's patch embedding), k >= 2 the stem and res2..res<k> (res5 with
        the final norm). Frozen parts take no gradient, their BatchNorms become FrozenBatchNorm2d
        and they stay in eval mode (no dropout) while the rest trains. Returns the frozen modules."""
        if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be an int from 0 (train everything) to 5 (freeze the "
                             f"stem and res2..res5), got {freeze_at!r}")
        stages = self.model.stages
        frozen = ([stages[0].downsample] if freeze_at >= 1 else []) + list(stages[:max(freeze_at - 1, 0)])
        if freeze_at == 5 and self._apply_norm:
            frozen.append(self.model.norm)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)  # in place: containers and a LayerNorm
        return frozen

    def train(self, mode: bool = True) -> "SoftBackbone":
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.model.forward_intermediates(x, indices=self._indices, norm=self._apply_norm,
                                                intermediates_only=True)
        return dict(zip(self._out_features, maps))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
                for f in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return SIZE_DIVISIBILITY

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": SIZE_DIVISIBILITY, "square_size": 0}

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of the position embeddings and the class token."""
        present = {n for n, _ in self.model.named_parameters()}
        return {f"model.{n}" for n in self.model.no_weight_decay() if n in present}


def soft_backbone_from_cfg(cfg, out_features) -> SoftBackbone:
    """SoftBackbone for MODEL.SOFT and MODEL.BACKBONE.FREEZE_AT, returning ``out_features``."""
    s = cfg.MODEL.SOFT
    return SoftBackbone(check_variant(s.VARIANT, "MODEL.SOFT.VARIANT"), out_features=out_features, stem_norm=s.STEM_NORM,
                        grad_checkpoint=s.GRAD_CHECKPOINT, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
                        **soft_model_kwargs(cfg))


@BACKBONE_REGISTRY.register()
def build_soft_backbone(cfg, input_shape: ShapeSpec) -> SoftBackbone:
    """SOFT alone: MODEL.SOFT.OUT_FEATURES among res2..res5 (strides 4, 8, 16, 32)."""
    check_input_channels(input_shape)
    return soft_backbone_from_cfg(cfg, cfg.MODEL.SOFT.OUT_FEATURES)


def check_input_channels(input_shape: ShapeSpec) -> None:
    if input_shape.channels != 3:
        raise ValueError(f"SOFT backbones take 3-channel images (MODEL.PIXEL_MEAN has {input_shape.channels} entries)")

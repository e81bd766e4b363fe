"""MODEL.WEIGHTS for SOFT detectors and segmenters: Detectron2 checkpoints, released SOFT ImageNet checkpoints
(converted on the fly) and our own ImageNet checkpoints; atomic checkpoint writes.

Key conversion and comparison come from soft_d2.model.checkpoint; this file only places the
backbone weights under the model's module path and reports what was loaded or skipped.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from torch import nn

from ..model import CheckpointMismatchError, SoftVisionTransformer
from ..model.checkpoint import compare_state_dicts, convert_official_state_dict, is_official_state_dict, \
    read_checkpoint, unwrap_state_dict
from ..utils.files import atomic_write

logger = logging.getLogger(__name__)


def find_soft_model(model: nn.Module) -> tuple[str, SoftVisionTransformer]:
    """The module path (with trailing dot) and the SoftVisionTransformer inside a detector."""
    for name, module in model.named_modules():
        if isinstance(module, SoftVisionTransformer):
            return (name + "." if name else ""), module
    raise ValueError(f"{type(model).__name__} contains no SoftVisionTransformer, so a SOFT ImageNet checkpoint cannot be loaded into it")


def is_backbone_checkpoint(state_dict: dict[str, Any]) -> bool:
    """An ImageNet (classification) checkpoint: release layout, or ours (``stages.*`` at top level)."""
    if is_official_state_dict(state_dict):
        return True
    return any(k.startswith("stages.") for k in state_dict) and not any(k.startswith("backbone.") for k in state_dict)


def _pruned_prefixes(soft: SoftVisionTransformer) -> list[str]:
    """Checkpoint entries the Detectron2 backbone deliberately has no place for."""
    prefixes = ["head."]
    if isinstance(soft.norm, nn.Identity):
        prefixes.append("norm.")
    prefixes += [f"stages.{i}." for i in range(len(soft.stages), 4)]
    return prefixes


def backbone_state_dict(model: nn.Module, checkpoint: dict[str, Any], use_ema: bool = True,
                        source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Map an ImageNet checkpoint onto ``model``'s SOFT backbone: returns detector-level keys.

    Every backbone tensor must be found with the right shape; otherwise CheckpointMismatchError
    lists what does not fit (usually a different variant than MODEL.SOFT.VARIANT).
    """
    prefix, soft = find_soft_model(model)
    state = convert_official_state_dict(checkpoint, use_ema=use_ema)
    own = soft.state_dict()
    # BatchNorm counters are absent from FrozenBN; they carry no weights.
    untracked = [k for k in state if k.endswith("num_batches_tracked") and k not in own]
    state = {k: v for k, v in state.items() if k not in untracked}
    report = compare_state_dicts(soft, state, exclude=_pruned_prefixes(soft))
    report.skipped += untracked
    if not report.complete:
        raise CheckpointMismatchError(
            f"SOFT ImageNet checkpoint {source} does not fit the backbone (MODEL.SOFT.VARIANT, "
            f"EMBED_DIMS/DEPTHS/SR_RATIOS must match the checkpoint's):\n{report.format()}")
    skipped = sorted({k.split(".")[0] if not k.startswith("stages.") else k for k in report.skipped})
    logger.info(f"Loaded SOFT ImageNet checkpoint {source} into {prefix or '<model>'}: {len(report.loaded)} "
                f"backbone tensors loaded, {len(report.skipped)} skipped ({', '.join(skipped) or 'none'})")
    return {prefix + k: state[k] for k in report.loaded}


class SoftDetectionCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that also accepts SOFT ImageNet checkpoints and saves atomically."""

    def __init__(self, model, save_dir: str = "", *, use_ema: bool = True, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.use_ema = use_ema

    def _torch_load(self, f: str) -> dict[str, Any]:
        local = PathManager.get_local_path(f)
        data = read_checkpoint(local)
        weights = unwrap_state_dict(data, use_ema=self.use_ema) if isinstance(data, dict) else data
        if isinstance(weights, dict) and is_backbone_checkpoint(weights):
            return {"model": backbone_state_dict(self.model, data, self.use_ema, source=f)}
        return data

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

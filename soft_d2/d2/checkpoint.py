"""MODEL.WEIGHTS for SOFT detectors and segmenters: Detectron2 checkpoints, released SOFT ImageNet checkpoints
(converted on the fly) and our own ImageNet checkpoints; atomic checkpoint writes.

Key conversion and comparison come from soft_d2.model.checkpoint, safe file reading from
soft_d2.model.checkpoint_file and the backbone-fit check from weights_fit; this file places the
backbone weights under the model's module path and decides what is loaded, refused or reported.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils.file_io import PathManager
from torch import nn

from ..model import CheckpointFileError, CheckpointMismatchError, LoadReport, SoftVisionTransformer
from ..model.checkpoint import convert_official_state_dict, is_official_state_dict, read_checkpoint, unwrap_state_dict
from ..model.checkpoint_file import read_pickle_file
from ..utils.files import atomic_write
from .weights_fit import backbone_fit, find_soft_model, fit_error, fit_report, load_summary

logger = logging.getLogger(__name__)

UNSAFE_OPT_IN = "MODEL.SOFT.UNSAFE_UNPICKLE True"
LAST_CHECKPOINT = "last_checkpoint"

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
                        source: str = "<state dict>", allow_partial: bool = False) -> dict[str, torch.Tensor]:
    """Map an ImageNet checkpoint onto ``model``'s SOFT backbone: returns detector-level keys.

    Every backbone tensor must be found with the right shape; otherwise CheckpointMismatchError
    lists what does not fit (usually a different variant than MODEL.SOFT.VARIANT). With
    ``allow_partial`` the tensors that fit are returned and the rest is left out.
    """
    return _imagenet_backbone(model, checkpoint, use_ema, source, allow_partial)[0]


def _imagenet_backbone(model: nn.Module, checkpoint: dict[str, Any], use_ema: bool, source: str,
                       allow_partial: bool) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """backbone_state_dict's weights, and the fit of the checkpoint against the backbone."""
    prefix, soft = find_soft_model(model)
    state = convert_official_state_dict(checkpoint, use_ema=use_ema, source=source)
    report = fit_report(soft, state, exclude=_pruned_prefixes(soft))
    if not report.complete and not allow_partial:
        raise fit_error(source, prefix[:-1], report)  # the file's keys are the backbone's own: none outside it
    return {prefix + k: state[k] for k in report.loaded}, report


def _imagenet_skipped(soft: SoftVisionTransformer, state: Mapping[str, Any]) -> list[str]:
    """The groups of an ImageNet checkpoint the backbone has no place for (head, norm, a pruned stage)."""
    pruned = tuple(_pruned_prefixes(soft))
    own = soft.state_dict()
    names = {(k.split(".")[0] if not k.startswith("stages.") else ".".join(k.split(".")[:2]))
             for k in state if k.startswith(pruned) or (k.endswith("num_batches_tracked") and k not in own)}
    return sorted(names)


def _strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """DDP's 'module.' on every key, as fvcore removes it: needed before the fit is counted."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _checkpoint_files(folder: str) -> list[str]:
    """The names of the checkpoint files in ``folder`` (none if it cannot be listed)."""
    try:
        return sorted(f for f in os.listdir(folder) if f.endswith((".pth", ".pkl", ".pyth")))
    except OSError:
        return []


class SoftDetectionCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that also accepts SOFT ImageNet checkpoints, refuses checkpoints that do not
    fill the SOFT backbone, reads files without running code from them, and saves atomically.

    ``allow_partial``: load a checkpoint that fills only part of the backbone (MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS).
    ``unsafe_unpickle``: read files with full unpickling, which runs any code they carry
    (MODEL.SOFT.UNSAFE_UNPICKLE; only for trusted files).
    """

    def __init__(self, model, save_dir: str = "", *, use_ema: bool = True, allow_partial: bool = False,
                 unsafe_unpickle: bool = False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.use_ema = use_ema
        self.allow_partial = allow_partial
        self.unsafe_unpickle = unsafe_unpickle
        self._source, self._imagenet, self._fit, self._imagenet_extra = "", None, None, []

    @classmethod
    def from_config(cls, cfg, model, save_dir: str = "", **checkpointables) -> "SoftDetectionCheckpointer":
        """A checkpointer with MODEL.SOFT's USE_EMA, ALLOW_PARTIAL_WEIGHTS and UNSAFE_UNPICKLE."""
        s = cfg.MODEL.SOFT
        return cls(model, save_dir, use_ema=s.USE_EMA, allow_partial=s.ALLOW_PARTIAL_WEIGHTS,
                   unsafe_unpickle=s.UNSAFE_UNPICKLE, **checkpointables)

    # ----------------------------------------------------------------------------- reading
    def load(self, path: str, *args, **kwargs) -> dict[str, Any]:
        url = urlparse(path) if path else None
        local = url._replace(query="").geturl() if url is not None and not url.scheme else None
        # (for both, fvcore would stop at a bare AssertionError saying the checkpoint is not found)
        if local is not None and not os.path.exists(local):
            raise FileNotFoundError(f"checkpoint {path!r} (MODEL.WEIGHTS) does not exist")
        if local is not None and not os.path.isfile(local):
            inside = _checkpoint_files(local)
            hint = (f"; checkpoint files in it: {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}"
                    if inside else "")
            raise CheckpointFileError(f"checkpoint {path!r} (MODEL.WEIGHTS) is not a file (a folder?): name the "
                                      f"checkpoint file itself{hint}")
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """As Detectron2's, with errors that say which last_checkpoint target is missing or unreadable."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        target = self.get_checkpoint_file()
        pointer = os.path.join(self.save_dir, LAST_CHECKPOINT)
        others = sorted(f for f in os.listdir(self.save_dir)
                        if f.endswith(".pth") and os.path.join(self.save_dir, f) != target)
        fix = (f"earlier checkpoints in {self.save_dir}: {', '.join(others)}; write one of these names into {pointer} "
               f"to resume from it" if others else f"no other checkpoint is in {self.save_dir}")
        fix += f", or delete {pointer} to start from MODEL.WEIGHTS"
        if not os.path.isfile(target):
            raise FileNotFoundError(f"--resume: {pointer} names {os.path.basename(target)!r}, which is not a file in "
                                    f"{self.save_dir}; {fix}")
        try:
            return self.load(target)
        except CheckpointFileError as err:
            raise CheckpointFileError(f"--resume: {err}. It is the checkpoint {pointer} names; {fix}") from None

    def _load_file(self, filename: str) -> dict[str, Any]:
        self._source, self._imagenet, self._fit, self._imagenet_extra = filename, None, None, []
        if filename.endswith(".pkl"):
            return self._read_model_zoo_pickle(filename)
        if filename.endswith(".pyth"):  # pycls, recognised by its extension as Detectron2 does
            data = self._read(filename)
            if not isinstance(data, Mapping) or "model_state" not in data:
                raise CheckpointMismatchError(f"checkpoint {filename}: a .pyth file must be a pycls checkpoint "
                                              "with 'model_state'")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # -> _torch_load, plus Detectron2's URL query options

    def _read(self, filename: str) -> Any:
        return read_checkpoint(filename, unsafe_unpickle=self.unsafe_unpickle, opt_in=UNSAFE_OPT_IN)

    def _read_model_zoo_pickle(self, filename: str) -> dict[str, Any]:
        """Detectron2's own model-zoo format, or a Caffe2 / Detectron1 one (weights renamed by suffix)."""
        data = read_pickle_file(filename, unsafe_unpickle=self.unsafe_unpickle, opt_in=UNSAFE_OPT_IN)
        if not isinstance(data, Mapping):
            raise CheckpointMismatchError(f"checkpoint {filename} holds a {type(data).__name__}, not a dict of weights")
        if "model" in data and "__author__" in data:
            return dict(data)
        blobs = data.get("blobs", data)  # detection models keep their weights under 'blobs'
        weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f: str) -> dict[str, Any]:
        local = PathManager.get_local_path(f)
        data = self._read(local)
        if not isinstance(data, Mapping):
            raise CheckpointMismatchError(f"checkpoint {f} holds a {type(data).__name__}, not a dict of weights")
        if isinstance(data.get("model"), Mapping) and not is_backbone_checkpoint(data["model"]):
            return data  # Detectron2's own format: the model and the trainer's state
        weights = unwrap_state_dict(data, use_ema=self.use_ema, source=f)
        if is_backbone_checkpoint(weights):
            _, soft = find_soft_model(self.model)
            self._imagenet = _imagenet_skipped(soft, convert_official_state_dict(weights))
            weights, report = _imagenet_backbone(self.model, data, self.use_ema, f, self.allow_partial)
            self._imagenet_extra = report.unexpected  # left out of the weights: the summary names them
            return {"model": weights}
        return {"model": weights}  # another layout (a timm or torchvision state dict): the fit check judges it

    def _load_model(self, checkpoint: dict[str, Any]):
        if checkpoint.get("matching_heuristics", False):  # rename by suffix first, so the fit counts the result
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(), checkpoint["model"], c2_conversion=checkpoint.get("__author__") == "Caffe2")
            checkpoint["matching_heuristics"] = False
        checkpoint["model"] = _strip_module_prefix(dict(checkpoint["model"]))
        self._fit = backbone_fit(self.model, checkpoint["model"])
        if self._fit is not None:
            self._fit[1].unexpected += self._imagenet_extra
        if self._fit is not None and not self._fit[1].complete:
            if not self.allow_partial:
                prefix, report = self._fit
                outside = [k for k in checkpoint["model"] if not k.startswith(prefix)]
                raise fit_error(self._source, prefix[:-1], report, outside)
        return super()._load_model(checkpoint)

    def _log_incompatible_keys(self, incompatible) -> None:
        """One line for the whole load instead of Detectron2's key listings."""
        if self._fit is None:
            return super()._log_incompatible_keys(incompatible)
        prefix, report = self._fit
        line, differs = load_summary(self._source, prefix, report, self.model.state_dict().keys(), incompatible,
                                     self._imagenet)
        (self.logger.warning if differs else self.logger.info)(line)

    # ----------------------------------------------------------------------------- writing
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
        path = os.path.join(self.save_dir, LAST_CHECKPOINT)
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

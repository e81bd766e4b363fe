"""Training checkpoints: atomic writes, exact resume, and weights for evaluation.

Format (timm-style, so Detectron2's MODEL.WEIGHTS and the release's tools read it as they read
the released files): a dict with
  'state_dict'      the model's weights in our parameter names (no 'module.' prefix),
  'state_dict_ema'  the EMA weights (when EMA is on; preferred by the loaders),
  'optimizer', 'scheduler', 'scaler' (their state dicts; scaler None without fp16),
  'epoch'           epochs completed, 'num_updates' optimizer steps done,
  'arch', 'config'  the model name and the resolved options (plain types only),
  'metric', 'best_metric', 'version'.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import torch
from torch import nn

from soft_d2.model import CheckpointMismatchError, load_checkpoint as load_model_checkpoint
from soft_d2.model.checkpoint import compare_state_dicts, read_checkpoint
from soft_d2.utils.files import atomic_write

FORMAT_VERSION = 1
LAST, BEST = "last.pth", "best.pth"


def atomic_save(obj: Any, path: str) -> None:
    """torch.save, atomically (temporary file + rename)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def training_state(model: nn.Module, ema, optimizer, scheduler, scaler, epoch: int, num_updates: int,
                   cfg: dict, metric: float | None, best_metric: float | None) -> dict[str, Any]:
    state = {
        "version": FORMAT_VERSION,
        "arch": cfg["model"],
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "num_updates": num_updates,
        "config": dict(cfg),
        "metric": metric,
        "best_metric": best_metric,
    }
    if ema is not None:
        state["state_dict_ema"] = ema.module.state_dict()
    return state


def save(state: dict[str, Any], output: str, is_best: bool) -> str:
    """Write ``output/last.pth`` (every epoch) and copy it to ``best.pth`` when it is the best; each
    file is replaced only once its new version is complete."""
    path = os.path.join(output, LAST)
    atomic_save(state, path)
    if is_best:
        with open(path, "rb") as src:
            atomic_write(os.path.join(output, BEST), lambda f: shutil.copyfileobj(src, f))
    return path


def resume(path: str, model: nn.Module, ema, optimizer, scheduler, scaler, *,
           unsafe_unpickle: bool = False) -> dict[str, Any]:
    """Restore everything from one of our checkpoints; returns it (epoch, num_updates, best_metric)."""
    state = read_checkpoint(path, unsafe_unpickle=unsafe_unpickle, opt_in="--unsafe_unpickle")
    missing = [k for k in ("state_dict", "optimizer", "epoch", "num_updates") if k not in state] \
        if isinstance(state, dict) else ["state_dict", "optimizer", "epoch", "num_updates"]
    if missing:
        raise ValueError(f"--resume {path!r} is not a training checkpoint of this trainer (it lacks {missing}); "
                         "to start from released or other weights, evaluate them with --eval or fine-tune them "
                         "in Detectron2 with MODEL.WEIGHTS")
    for key, module in (("state_dict", model), ("state_dict_ema", ema.module if ema is not None else None)):
        if module is None:
            continue
        if key not in state:
            raise ValueError(f"--resume {path!r} has no EMA weights but model_ema is on; pass --no-model_ema")
        report = compare_state_dicts(module, state[key])
        if not report.complete:  # before anything is restored
            raise CheckpointMismatchError(
                f"--resume {path!r} was written for another model ({state.get('arch', 'unknown arch')}, its "
                f"{key} does not fit this --model / --model_kwargs / class count):\n{report.format()}")
    model.load_state_dict(state["state_dict"])
    if ema is not None:
        ema.module.load_state_dict(state["state_dict_ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state


def load_weights(model: nn.Module, path: str, use_ema: bool = True, *, unsafe_unpickle: bool = False):
    """Released or our weights into ``model`` for evaluation (strict: every tensor must fit)."""
    return load_model_checkpoint(model, path, use_ema=use_ema, strict=True, unsafe_unpickle=unsafe_unpickle,
                                 opt_in="--unsafe_unpickle")

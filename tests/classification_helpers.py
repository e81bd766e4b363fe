"""Shared helpers of the classification-trainer tests: tiny data sets and fast options."""
from __future__ import annotations

import json
import os

from classification.config import resolve
from soft_d2.data import shapes_classification

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "classification", "configs")
QUICKSTART = os.path.join(CONFIGS, "quickstart_soft_norm_tiny_shapes.yaml")
# A SOFT far smaller than Tiny (same code paths) for the tests that train several epochs.
SMALL_MODEL = json.dumps({"embed_dims": [16, 32, 48, 64], "num_heads": [1, 2, 3, 4], "depths": [1, 1, 1, 1]})


def tiny_imagefolder(root: str, train: int = 4, val: int = 2) -> str:
    """The built-in shapes set with ``train``/``val`` images per class (8 classes) under ``root``."""
    return shapes_classification.ensure_dataset(root, per_class={"train": train, "val": val})


def fast_options(data: str, output: str, **overrides) -> dict:
    """Small input, few steps, no workers; the release recipe otherwise (mixup, RandAugment, EMA...)."""
    opts = dict(data=data, output=output, img_size=32, batch_size=4, workers=0, epochs=1, warmup_epochs=0,
                cooldown_epochs=0, max_steps=2, log_interval=1, tensorboard=False, lr=1e-3, clip_grad=1.0,
                model_ema_decay=0.9)
    opts.update(overrides)
    return opts


def config(data: str, output: str, config_file: str | None = None, **overrides):
    return resolve(config_file, fast_options(data, output, **overrides))

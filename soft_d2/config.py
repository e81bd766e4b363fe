"""The full soft-d2 config: Detectron2's defaults, the SOFT layer's keys and each task's, composed.

    cfg = compose_config()                       # every key train_net.py reads
    cfg = load_config("configs/....yaml", opts)  # + a YAML file and KEY VALUE overrides, frozen;
                                                 # DATASETS.REGISTER_COCO_INSTANCES registered

Importing this module imports both task packages, which registers their heads and data sets.
"""
from __future__ import annotations

import os

import torch
import yaml
from detectron2.config import CfgNode, get_cfg

from .d2.config import add_soft_config
from .detection.config import add_detection_config
from .detection.datasets import register_config_datasets
from .segmentation.config import add_segmentation_config


def compose_config(cfg: CfgNode | None = None) -> CfgNode:
    """Detectron2's default config (or ``cfg``) with the keys of the SOFT layer, detection and segmentation."""
    cfg = get_cfg() if cfg is None else cfg
    add_soft_config(cfg)
    add_detection_config(cfg)
    add_segmentation_config(cfg)
    return cfg


def merge_config_file(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file`` with plain YAML only: Detectron2's default would also accept tags such as
    ``!!python/object/apply``, which run code while the file is read."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.constructor.ConstructorError as err:
        raise ValueError(f"config file {config_file} (or a _BASE_ it names) uses a YAML tag that would construct Python "
                         f"objects ({err.problem}); configs are plain YAML: KEY: value") from None
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError, TypeError) as err:  # not YAML, or not a mapping
        raise ValueError(f"config file {config_file} is not a Detectron2 YAML config (a mapping of KEY: value): "
                         f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from None


def load_config(config_file: str, opts: list) -> CfgNode:
    """All keys, then the YAML file and KEY VALUE overrides; frozen.

    A config asking for CUDA on a machine without it runs on the CPU instead (same recipe). The COCO
    data sets of DATASETS.REGISTER_COCO_INSTANCES are registered with Detectron2 before it returns.
    """
    cfg = compose_config()
    merge_config_file(cfg, config_file)
    cfg.merge_from_list(opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_config_datasets(cfg)
    return cfg

"""Where data sets live and how they are made ready: Detectron2's data-set root, a registry of
preparers (the tasks' built-in sets generate themselves on first use) and a clear error for
file-based sets whose files are missing (e.g. COCO not downloaded, or a wrong path in
DATASETS.REGISTER_COCO_INSTANCES)."""
from __future__ import annotations

import os
from typing import Callable

from detectron2.data import MetadataCatalog

# name -> True when the preparer handled it (generated or checked the files); registered by the tasks.
_PREPARERS: list[Callable[[str], bool]] = []


def datasets_root() -> str:
    """Detectron2's convention: $DETECTRON2_DATASETS, else ./datasets."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def add_dataset_preparer(preparer: Callable[[str], bool]) -> None:
    """Let ``prepare_dataset`` hand each name to ``preparer(name) -> bool`` first."""
    if preparer not in _PREPARERS:
        _PREPARERS.append(preparer)


def prepare_dataset(name: str) -> None:
    """Make ``name``'s files exist: a task's preparer generates its built-in sets, else the files are checked."""
    if any(preparer(name) for preparer in _PREPARERS):
        return
    check_dataset_files(name)


def check_dataset_files(name: str) -> None:
    """Raise FileNotFoundError naming the missing file or folder of a file-based data set: for a set of
    DATASETS.REGISTER_COCO_INSTANCES the entry to fix, for the others where Detectron2 looks for data."""
    meta = MetadataCatalog.get(name)
    for attr in ("json_file", "image_root"):
        path = getattr(meta, attr, None)
        if path is None or os.path.exists(path):
            continue
        registered_from = getattr(meta, "registered_from", None)
        if registered_from is not None:  # a user's own data set, named in the config
            raise FileNotFoundError(
                f"data set {name!r} is not available: its {attr} {path} does not exist. It comes from the "
                f"config key {registered_from} (entry [{name!r}, json_file, image_root]; relative paths are "
                f"taken from the directory the command runs in, here {os.getcwd()}). Fix the entry or "
                f"create the files.")
        env = os.environ.get("DETECTRON2_DATASETS")
        where = f"DETECTRON2_DATASETS={env}" if env else "DETECTRON2_DATASETS is not set, so ./datasets is used"
        raise FileNotFoundError(
            f"data set {name!r} is not available: {path} does not exist. Detectron2 looks for data sets under "
            f"the folder named by the DETECTRON2_DATASETS environment variable ({where}); for COCO it expects "
            f"{os.path.join(datasets_root(), 'coco')}/annotations/instances_{{train,val}}2017.json and "
            f"{os.path.join(datasets_root(), 'coco')}/{{train,val}}2017/. Download COCO there or point "
            f"DETECTRON2_DATASETS at the folder that holds coco/. The built-in set needs no download: "
            f"DATASETS.TRAIN ('soft_shapes_train',) DATASETS.TEST ('soft_shapes_val',). Data sets of your "
            f"own: the config key DATASETS.REGISTER_COCO_INSTANCES (docs/GETTING_STARTED.md).")

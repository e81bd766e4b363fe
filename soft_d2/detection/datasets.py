"""Data set registration: the built-in shapes set (generated on first use) and clear errors for
data sets whose files are missing (e.g. COCO not downloaded)."""
from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..data import shapes

BUILTIN_PREFIX = "soft_shapes"


def datasets_root() -> str:
    """Detectron2's convention: $DETECTRON2_DATASETS, else ./datasets."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def builtin_folder() -> str:
    return os.path.join(datasets_root(), f"soft_shapes_v{shapes.VERSION}")


def _builtin_split(name: str) -> str | None:
    split = name[len(BUILTIN_PREFIX) + 1:] if name.startswith(BUILTIN_PREFIX + "_") else None
    return split if split in shapes.SPLITS else None


# Other tasks' preparers (e.g. soft_d2.segmentation): name -> True when they handled it.
_EXTRA_PREPARERS: list = []


def add_dataset_preparer(preparer) -> None:
    """Let ``prepare_dataset`` hand names it does not know to ``preparer(name) -> bool``."""
    if preparer not in _EXTRA_PREPARERS:
        _EXTRA_PREPARERS.append(preparer)


def prepare_dataset(name: str) -> None:
    """Make ``name``'s files exist: generate a built-in split if needed, else check the files are there."""
    if any(preparer(name) for preparer in _EXTRA_PREPARERS):
        return
    split = _builtin_split(name)
    if split is not None:
        folder = builtin_folder()
        json_file = shapes.write_split(split, folder)
        if getattr(MetadataCatalog.get(name), "json_file", json_file) != json_file:
            MetadataCatalog.remove(name)  # DETECTRON2_DATASETS changed since the last use
            _set_builtin_metadata(name)
        MetadataCatalog.get(name).set(json_file=json_file, image_root=folder)
        return
    check_dataset_files(name)


def check_dataset_files(name: str) -> None:
    """Raise FileNotFoundError naming the expected folder when a file-based data set is missing."""
    meta = MetadataCatalog.get(name)
    for attr in ("json_file", "image_root"):
        path = getattr(meta, attr, None)
        if path is None or os.path.exists(path):
            continue
        env = os.environ.get("DETECTRON2_DATASETS")
        where = f"DETECTRON2_DATASETS={env}" if env else "DETECTRON2_DATASETS is not set, so ./datasets is used"
        raise FileNotFoundError(
            f"data set {name!r} is not available: {path} does not exist. Detectron2 looks for data sets under "
            f"the folder named by the DETECTRON2_DATASETS environment variable ({where}); for COCO it expects "
            f"{os.path.join(datasets_root(), 'coco')}/annotations/instances_{{train,val}}2017.json and "
            f"{os.path.join(datasets_root(), 'coco')}/{{train,val}}2017/. Download COCO there or point "
            f"DETECTRON2_DATASETS at the folder that holds coco/. The built-in set needs no download: "
            f"DATASETS.TRAIN ('{BUILTIN_PREFIX}_train',) DATASETS.TEST ('{BUILTIN_PREFIX}_val',).")


def _load_builtin(name: str):
    prepare_dataset(name)
    meta = MetadataCatalog.get(name)
    return load_coco_json(meta.json_file, meta.image_root, name)


def register_builtin() -> None:
    """Register soft_shapes_train / soft_shapes_val (generated into builtin_folder() on first use)."""
    for split in shapes.SPLITS:
        name = f"{BUILTIN_PREFIX}_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: _load_builtin(name))
        _set_builtin_metadata(name)


def _set_builtin_metadata(name: str) -> None:
    MetadataCatalog.get(name).set(thing_classes=list(shapes.CATEGORIES), evaluator_type="coco")

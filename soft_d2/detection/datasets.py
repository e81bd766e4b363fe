"""The built-in detection data set "SOFT shapes" (``soft_shapes_{train,val}``, COCO format with
polygon masks), generated into ``$DETECTRON2_DATASETS/soft_shapes_v<N>`` on first use."""
from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..d2.datasets import add_dataset_preparer, datasets_root, prepare_dataset
from ..data import shapes

BUILTIN_PREFIX = "soft_shapes"


def builtin_folder() -> str:
    return os.path.join(datasets_root(), f"soft_shapes_v{shapes.VERSION}")


def _builtin_split(name: str) -> str | None:
    split = name[len(BUILTIN_PREFIX) + 1:] if name.startswith(BUILTIN_PREFIX + "_") else None
    return split if split in shapes.SPLITS else None


def prepare_builtin_dataset(name: str) -> bool:
    """Generate a built-in split if needed and point its metadata at it; False for other names."""
    split = _builtin_split(name)
    if split is None:
        return False
    folder = builtin_folder()
    json_file = shapes.write_split(split, folder)
    if getattr(MetadataCatalog.get(name), "json_file", json_file) != json_file:
        MetadataCatalog.remove(name)  # DETECTRON2_DATASETS changed since the last use
        _set_builtin_metadata(name)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=folder)
    return True


def _load_builtin(name: str):
    prepare_dataset(name)
    meta = MetadataCatalog.get(name)
    return load_coco_json(meta.json_file, meta.image_root, name)


def register_builtin() -> None:
    """Register soft_shapes_train / soft_shapes_val (generated into builtin_folder() on first use)."""
    add_dataset_preparer(prepare_builtin_dataset)
    for split in shapes.SPLITS:
        name = f"{BUILTIN_PREFIX}_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: _load_builtin(name))
        _set_builtin_metadata(name)


def _set_builtin_metadata(name: str) -> None:
    MetadataCatalog.get(name).set(thing_classes=list(shapes.CATEGORIES), evaluator_type="coco")

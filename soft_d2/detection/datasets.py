"""Detection data sets: the built-in "SOFT shapes" (``soft_shapes_{train,val}``, COCO format with
polygon masks), generated into ``$DETECTRON2_DATASETS/soft_shapes_v<N>`` on first use, and a
user's own COCO-format sets named by the config key DATASETS.REGISTER_COCO_INSTANCES."""
from __future__ import annotations

import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

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


# The config key, and the metadata value that marks a data set as registered through it.
REGISTER_KEY = "DATASETS.REGISTER_COCO_INSTANCES"
_ENTRY_FORM = ('[name, json_file, image_root], e.g. '
               '["my_train", "datasets/my/annotations/train.json", "datasets/my/train"]')


def register_config_datasets(cfg) -> list[str]:
    """Register every [name, json_file, image_root] of DATASETS.REGISTER_COCO_INSTANCES with Detectron2's
    ``register_coco_instances``; returns the names. Paths are made absolute from the current directory.

    The same name with the same files again is a no-op. ValueError for an entry that is not three
    non-empty strings, for a name registered with other files and for a name registered otherwise
    (Detectron2's and soft-d2's built-in sets, or a set registered from Python code).
    Files are not checked here: ``prepare_dataset`` (train_net.py) names a missing one.
    """
    entries = cfg.DATASETS.REGISTER_COCO_INSTANCES
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"{REGISTER_KEY} must be a list of {_ENTRY_FORM}; got {entries!r}")
    names = []
    for entry in entries:
        if (not isinstance(entry, (list, tuple)) or len(entry) != 3
                or not all(isinstance(v, str) and v for v in entry)):
            raise ValueError(f"{REGISTER_KEY}: each entry is three non-empty strings {_ENTRY_FORM}; got {entry!r}")
        name, json_file, image_root = entry[0], _absolute(entry[1]), _absolute(entry[2])
        if name in DatasetCatalog.list():
            _check_same_registration(name, json_file, image_root)
        else:
            register_coco_instances(name, {"registered_from": REGISTER_KEY}, json_file, image_root)
        names.append(name)
    return names


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _check_same_registration(name: str, json_file: str, image_root: str) -> None:
    meta = MetadataCatalog.get(name)
    registered = (getattr(meta, "json_file", None), getattr(meta, "image_root", None))
    if getattr(meta, "registered_from", None) == REGISTER_KEY:
        if registered == (json_file, image_root):
            return
        raise ValueError(f"{REGISTER_KEY}: data set {name!r} is already registered with json_file {registered[0]} "
                         f"and image_root {registered[1]}; this entry names json_file {json_file} and image_root "
                         f"{image_root}. Give each data set its own name.")
    where = (f"json_file {registered[0]}, image_root {registered[1]}" if registered[0] else "its files are "
             "generated or located on first use")
    raise ValueError(f"{REGISTER_KEY}: {name!r} is the name of a data set registered elsewhere (a built-in set of "
                     f"Detectron2 or soft-d2, or one registered from Python code; {where}); this entry names "
                     f"json_file {json_file} and image_root {image_root}. Choose another name for it.")


def coco_thing_classes(json_file: str) -> list[str]:
    """The category names of a COCO json in the order Detectron2's loader gives them (sorted by id)."""
    with open(json_file) as f:
        categories = json.load(f)["categories"]
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]

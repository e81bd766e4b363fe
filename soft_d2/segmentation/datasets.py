"""Semantic-segmentation data sets: the built-in "SOFT shapes" label maps (generated on first use)
and ADE20K through Detectron2's registration, with a clear error when its files are missing.

Built-in ``soft_shapes_sem_seg_{train,val}``: the images of the detection set's generator
(soft_d2/data/shapes.py, same images for the same split and index) with one label PNG each:
0 = background, 1 = circle, 2 = triangle, 3 = square. Written to
``$DETECTRON2_DATASETS/soft_shapes_sem_seg_v<N>/<split>/{images,labels}``.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from detectron2.structures.masks import polygons_to_bitmask
from PIL import Image

from ..data import shapes
from ..d2.datasets import datasets_root

BUILTIN_PREFIX = "soft_shapes_sem_seg"
STUFF_CLASSES = ("background",) + tuple(shapes.CATEGORIES)
IGNORE_LABEL = 255
ADE20K_FOLDER = "ADEChallengeData2016"
ADE20K_SPLITS = {"ade20k_sem_seg_train": "training", "ade20k_sem_seg_val": "validation"}


def builtin_folder() -> str:
    return os.path.join(datasets_root(), f"{BUILTIN_PREFIX}_v{shapes.VERSION}")


def label_map(split: str, index: int) -> tuple[Image.Image, np.ndarray]:
    """One generated image and its label map (uint8, 0 = background, k = the k-th shape class)."""
    image, objects = shapes.generate_image(split, index)
    labels = np.zeros((image.height, image.width), dtype=np.uint8)
    for obj in objects:  # visible parts do not overlap, so the drawing order does not matter
        polygons = [np.asarray(p, dtype=np.float64) for p in obj["segmentation"]]
        labels[polygons_to_bitmask(polygons, image.height, image.width)] = obj["category"] + 1
    return image, labels


def write_sem_seg_split(split: str, folder: str, num_images: int | None = None) -> str:
    """Write ``split`` (JPEG images + PNG labels) into ``folder/split`` atomically; return that path."""
    num_images = shapes.SPLITS[split][0] if num_images is None else num_images
    target = os.path.join(folder, split)
    if os.path.isdir(target):
        return target
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{split}_", dir=folder)
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(tmp, sub))
    for index in range(num_images):
        image, labels = label_map(split, index)
        image.save(os.path.join(tmp, "images", f"{index:06d}.jpg"), quality=92)
        Image.fromarray(labels, mode="L").save(os.path.join(tmp, "labels", f"{index:06d}.png"))
    try:
        os.rename(tmp, target)
    except OSError:  # another process published the same (identical) split first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _builtin_split(name: str) -> str | None:
    split = name[len(BUILTIN_PREFIX) + 1:] if name.startswith(BUILTIN_PREFIX + "_") else None
    return split if split in shapes.SPLITS else None


def _set_metadata(name: str, image_root: str, sem_seg_root: str, classes) -> None:
    meta = MetadataCatalog.get(name)
    if getattr(meta, "image_root", image_root) != image_root:
        MetadataCatalog.remove(name)  # DETECTRON2_DATASETS changed since the last use
        meta = MetadataCatalog.get(name)
    meta.set(stuff_classes=list(classes), image_root=image_root, sem_seg_root=sem_seg_root,
             ignore_label=IGNORE_LABEL, evaluator_type="sem_seg")


def ade20k_missing_message(name: str, missing: list[str]) -> str:
    root = datasets_root()
    env = os.environ.get("DETECTRON2_DATASETS")
    where = f"DETECTRON2_DATASETS={env}" if env else "DETECTRON2_DATASETS is not set, so ./datasets is used"
    base = os.path.join(root, ADE20K_FOLDER)
    return (f"data set {name!r} is not available: missing {', '.join(missing)}. ADE20K must be at {base} "
            f"({where}) with images/{{training,validation}}/*.jpg and annotations_detectron2/{{training,validation}}/*.png. "
            f"Download ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip), "
            f"unzip it into {root}, then make annotations_detectron2 (labels minus 1, 0 -> 255 ignore) with "
            f"'python -m soft_d2.segmentation.prepare_ade20k' (it reads DETECTRON2_DATASETS; Detectron2's "
            f"datasets/prepare_ade20k_sem_seg.py does the same), or point "
            f"DETECTRON2_DATASETS at the folder that holds {ADE20K_FOLDER}/. The built-in set needs no download: "
            f"DATASETS.TRAIN ('{BUILTIN_PREFIX}_train',) DATASETS.TEST ('{BUILTIN_PREFIX}_val',).")


def _prepare_ade20k(name: str) -> None:
    """Check the ADE20K files under the current DETECTRON2_DATASETS and (re)point the registration there."""
    base = os.path.join(datasets_root(), ADE20K_FOLDER)
    image_root = os.path.join(base, "images", ADE20K_SPLITS[name])
    sem_seg_root = os.path.join(base, "annotations_detectron2", ADE20K_SPLITS[name])
    missing = [p for p in (image_root, sem_seg_root) if not os.path.isdir(p) or not os.listdir(p)]
    if missing:
        raise FileNotFoundError(ade20k_missing_message(name, [f"{p}/" for p in missing]))
    _set_metadata(name, image_root, sem_seg_root, ADE20K_SEM_SEG_CATEGORIES)


def prepare_sem_seg_dataset(name: str) -> bool:
    """Make a semantic-segmentation data set's files exist (generate / check); False if not ours."""
    if name in ADE20K_SPLITS:
        _prepare_ade20k(name)
        return True
    split = _builtin_split(name)
    if split is None:
        return False
    target = write_sem_seg_split(split, builtin_folder())
    _set_metadata(name, os.path.join(target, "images"), os.path.join(target, "labels"), STUFF_CLASSES)
    return True


def _load(name: str) -> list[dict]:
    """Catalog loader: prepare (generate / check, under the current DETECTRON2_DATASETS), then list the files."""
    prepare_sem_seg_dataset(name)
    meta = MetadataCatalog.get(name)
    return load_sem_seg(meta.sem_seg_root, meta.image_root, gt_ext="png", image_ext="jpg")


def register_sem_seg_datasets() -> None:
    """Register soft_shapes_sem_seg_train / _val (generated into builtin_folder() on first use) and
    re-register Detectron2's ADE20K splits so they follow the current DETECTRON2_DATASETS (Detectron2
    fixes the paths at import) and fail with ade20k_missing_message when the files are not there."""
    names = [f"{BUILTIN_PREFIX}_{split}" for split in shapes.SPLITS] + list(ADE20K_SPLITS)
    for name in names:
        if name in DatasetCatalog.list():
            registered = DatasetCatalog[name]
            if isinstance(registered, functools.partial) and registered.func is _load:
                continue  # ours already
            DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _load_bound(name))
        if name not in ADE20K_SPLITS:
            MetadataCatalog.get(name).set(stuff_classes=list(STUFF_CLASSES), ignore_label=IGNORE_LABEL,
                                          evaluator_type="sem_seg")


def _load_bound(name: str):
    return functools.partial(_load, name)

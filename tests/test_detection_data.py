"""The built-in data set and the data path's errors and edge cases."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image
from pycocotools import mask as mask_utils

from detection_helpers import QUICKSTART_RCNN, load_cfg, make_small_builtin, quick_train_opts
from soft_d2.d2 import ImageReadError, check_dataset_files, prepare_dataset
from soft_d2.detection import DetectionDatasetMapper
from soft_d2.data import shapes


def test_generation_is_deterministic():
    a_img, a_ann = shapes.generate_image("train", 7)
    b_img, b_ann = shapes.generate_image("train", 7)
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img)) and a_ann == b_ann
    c_img, _ = shapes.generate_image("val", 7)
    assert not np.array_equal(np.asarray(a_img)[:50, :50], np.asarray(c_img)[:50, :50])


def test_builtin_properties():
    counts, areas, categories, overlaps = [], [], set(), 0
    for index in range(60):
        image, anns = shapes.generate_image("train", index)
        counts.append(len(anns))
        for a in anns:
            categories.add(a["category"])
            areas.append(a["area"])
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], image.height, image.width))
            # polygons describe the visible pixels: their rasterized area matches the annotated area
            assert abs(mask_utils.area(rle) - a["area"]) <= 0.1 * a["area"] + 4
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= image.width and y + h <= image.height
        boxes = np.array([a["bbox"] for a in anns], dtype=float)
        if len(boxes) > 1:
            ious = mask_utils.iou(boxes.tolist(), boxes.tolist(), [0] * len(boxes))
            overlaps += int((ious[np.triu_indices(len(boxes), 1)] > 0).sum())
    assert len(categories) >= 3 and min(counts) >= 1 and max(counts) <= 6 and max(counts) >= 5
    areas = np.array(areas)
    assert (areas < 32 ** 2).sum() >= 10 and ((areas >= 32 ** 2) & (areas <= 96 ** 2)).sum() >= 10 and (areas > 96 ** 2).sum() >= 5
    assert overlaps >= 10  # objects overlap and occlude each other


def test_builtin_split_is_registered_through_coco_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    make_small_builtin(str(tmp_path), train_images=3, val_images=2)
    records = DatasetCatalog.get("soft_shapes_val")
    assert len(records) == 2 and all(os.path.exists(r["file_name"]) for r in records)
    assert MetadataCatalog.get("soft_shapes_val").thing_classes == list(shapes.CATEGORIES)
    coco = json.load(open(MetadataCatalog.get("soft_shapes_val").json_file))
    assert all(isinstance(a["segmentation"], list) for a in coco["annotations"])  # polygon masks


def test_missing_coco_names_folder_and_variable(monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    meta = MetadataCatalog.get("coco_2017_train")
    if os.path.exists(meta.json_file):
        pytest.fail(f"COCO unexpectedly present at {meta.json_file}: this test needs it absent")
    with pytest.raises(FileNotFoundError) as info:
        check_dataset_files("coco_2017_train")
    message = str(info.value)
    assert "DETECTRON2_DATASETS" in message and meta.json_file in message and "coco" in message
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        prepare_dataset("coco_2017_val")


def test_bad_image_file_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    cfg = load_cfg(QUICKSTART_RCNN, ["INPUT.COPY_PASTE.ENABLED", "False"])  # no source images to load
    mapper = DetectionDatasetMapper(cfg, is_train=True)
    with pytest.raises(ImageReadError, match="broken.jpg"):
        mapper({"file_name": str(bad), "height": 10, "width": 10, "image_id": 0, "annotations": []})


def write_edge_case_dataset(folder) -> tuple[str, str]:
    """Grayscale image with objects, a tiny image, and an image without annotations (COCO JSON)."""
    images, annotations = [], []
    for index, (mode, size, with_objects) in enumerate([("L", (160, 120), True), ("RGB", (24, 18), True),
                                                         ("RGB", (100, 140), False)]):
        image, objects = shapes.generate_image("val", index)
        image = image.resize(size).convert(mode)
        scale_x, scale_y = size[0] / shapes.generate_image("val", index)[0].width, size[1] / shapes.generate_image("val", index)[0].height
        name = f"{index}.jpg"
        image.save(os.path.join(folder, name))
        images.append({"id": index + 1, "file_name": name, "width": size[0], "height": size[1]})
        if not with_objects:
            continue
        for o in objects[:2]:
            x, y, w, h = o["bbox"]
            poly = [[v * (scale_x if i % 2 == 0 else scale_y) for i, v in enumerate(p)] for p in o["segmentation"]]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": o["category"] + 1,
                                "bbox": [x * scale_x, y * scale_y, max(w * scale_x, 1), max(h * scale_y, 1)],
                                "area": o["area"] * scale_x * scale_y, "segmentation": poly, "iscrowd": 0})
    path = os.path.join(folder, "edge.json")
    json.dump({"images": images, "annotations": annotations,
               "categories": [{"id": i + 1, "name": n} for i, n in enumerate(shapes.CATEGORIES)]}, open(path, "w"))
    return path, str(folder)


def test_grayscale_tiny_and_unannotated_images_train_and_infer(tmp_path):
    import train_net

    json_file, root = write_edge_case_dataset(tmp_path)
    name = f"edge_cases_{os.getpid()}"
    register_coco_instances(name, {}, json_file, root)
    out = str(tmp_path / "out")
    cfg = load_cfg(QUICKSTART_RCNN, quick_train_opts(out, max_iter=3, batch=3) + [
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False",
        "DATALOADER.ASPECT_RATIO_GROUPING", "False", "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MIN_SIZE_TEST", "32"])
    cfg.freeze()
    assert Image.open(os.path.join(root, "0.jpg")).mode == "L"
    assert len(DatasetCatalog.get(name)) == 3  # the unannotated image is kept for training
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = train_net.Trainer.test(cfg, trainer.model)
    assert "bbox" in results and "segm" in results

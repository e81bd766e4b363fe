"""Copy-paste augmentation: every pasted or pasted-over object's annotation must match the pixels.

Each object is painted in its own flat colour, so the colour map of the result is an independent
ground truth for what every annotation should cover after objects were pasted over each other.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import soft_d2.detection  # noqa: F401  (registers the built-in data sets and backbones)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, polygons_to_bitmask
from soft_d2.data.shapes import mask_to_polygons
from soft_d2.config import load_config
from soft_d2.detection.copy_paste import CopyPaste
from soft_d2.detection.mapper import DetectionDatasetMapper

BACKGROUND = (7, 7, 7)
H, W = 120, 160


def _rect(x0, y0, x1, y1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def _triangle(x0, y0, size):
    return [float(v) for v in (x0, y0 + size, x0 + size, y0 + size, x0 + size / 2, y0)]


def _paint(objects, path=None):
    """objects: (polygon, colour, category). Later objects cover earlier ones; annotations are of the
    visible parts, like the built-in data and COCO."""
    image = np.full((H, W, 3), BACKGROUND, dtype=np.uint8)
    annotations = []
    for polygon, colour, category in objects:
        image[polygons_to_bitmask([np.asarray(polygon)], H, W)] = colour
    for polygon, colour, category in objects:
        visible = (image == colour).all(-1)
        ys, xs = np.nonzero(visible)
        annotations.append({"segmentation": mask_to_polygons(visible), "category_id": category, "iscrowd": 0,
                            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
                                     float(ys.max() + 1 - ys.min())], "bbox_mode": BoxMode.XYWH_ABS})
    if path is not None:
        Image.fromarray(image).save(path)  # PNG: lossless, the colours stay exact
    return image, annotations


@pytest.fixture
def sources(tmp_path):
    specs = [
        [(_rect(10, 10, 60, 50), (200, 0, 0), 0), (_triangle(70, 20, 40), (0, 200, 0), 1)],
        [(_rect(5, 60, 45, 110), (0, 0, 200), 2), (_rect(30, 80, 70, 115), (200, 200, 0), 0),
         (_triangle(100, 40, 50), (200, 0, 200), 1)],
    ]
    dicts = []
    for i, objects in enumerate(specs):
        path = str(tmp_path / f"src{i}.png")
        _, annotations = _paint(objects, path)
        dicts.append({"file_name": path, "height": H, "width": W, "annotations": annotations})
    return dicts


def _target():
    # A large rectangle with a triangle over one corner; colours differ from every source's.
    return _paint([(_rect(20, 20, 140, 100), (0, 200, 200), 2), (_triangle(100, 10, 30), (90, 90, 90), 1)])


def _check_annotations_match_colours(image, annotations):
    colours = {tuple(c) for c in image.reshape(-1, 3)} - {BACKGROUND}
    seen = set()
    for a in annotations:
        mask = polygons_to_bitmask([np.asarray(p) for p in a["segmentation"]], H, W)
        values, counts = np.unique(image[mask].reshape(-1, 3), axis=0, return_counts=True)
        colour = tuple(values[counts.argmax()])
        truth = (image == colour).all(-1)
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.9, f"annotation of colour {colour} covers the wrong pixels (IoU {iou:.3f})"
        x0, y0, x1, y1 = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        ys, xs = np.nonzero(truth)
        assert abs(x0 - xs.min()) <= 1 and abs(y0 - ys.min()) <= 1
        assert abs(x1 - xs.max() - 1) <= 1 and abs(y1 - ys.max() - 1) <= 1
        seen.add(colour)
    assert seen == colours, "every visible object is annotated once"


def test_pasted_and_covered_objects_are_annotated_exactly(sources):
    paste = CopyPaste(sources, max_objects=3, image_format="RGB", min_visible=0.4)
    image, annotations = _target()
    pasted_any = False
    for seed in range(30):
        rng = np.random.RandomState(seed)
        out_image, out_annotations = paste(image, [dict(a) for a in annotations], rng=rng)
        assert out_image is not image and (image == _target()[0]).all(), "the input image is not modified"
        _check_annotations_match_colours(out_image, out_annotations)
        pasted_any |= len(out_annotations) > len(annotations)
        for colour in [(0, 200, 200), (90, 90, 90)]:  # the target's own objects keep >= 40% of their pixels
            before = (image == colour).all(-1).sum()
            assert (out_image == colour).all(-1).sum() >= 0.4 * before - 1
    assert pasted_any


def test_min_visible_one_forbids_covering(sources):
    paste = CopyPaste(sources, max_objects=3, image_format="RGB", min_visible=1.0)
    image, annotations = _target()
    for seed in range(10):
        out_image, out_annotations = paste(image, annotations, rng=np.random.RandomState(seed))
        for a in annotations:  # untouched originals keep their exact polygons
            assert any(o.get("segmentation") == a["segmentation"] for o in out_annotations)
        assert ((out_image == (0, 200, 200)).all(-1) == (image == (0, 200, 200)).all(-1)).all()


def test_no_placement_inside_an_object():
    """A small object may not land wholly inside a big one: COCO polygons cannot hold the hole."""
    big = polygons_to_bitmask([np.asarray(_rect(20, 20, 140, 100))], H, W)
    inside = np.zeros((H, W), dtype=bool)
    inside[50:60, 50:60] = True
    straddling = np.zeros((H, W), dtype=bool)
    straddling[15:25, 50:60] = True
    assert not CopyPaste._keeps(big, 0.0, inside)
    assert CopyPaste._keeps(big, 0.0, straddling)
    assert not CopyPaste._keeps(big, big.sum(), straddling)  # would keep less than the floor


def test_crowd_or_rle_images_are_left_alone(sources):
    paste = CopyPaste(sources, max_objects=3, image_format="RGB")
    image, annotations = _target()
    annotations[0] = {**annotations[0], "iscrowd": 1}
    out_image, out_annotations = paste(image, annotations, rng=np.random.RandomState(0))
    assert out_image is image and out_annotations is annotations


def test_box_only_data_is_refused_with_the_key_to_change():
    with pytest.raises(ValueError, match="INPUT.COPY_PASTE.ENABLED"):
        CopyPaste([{"file_name": "x.jpg", "annotations": [{"bbox": [0, 0, 5, 5], "category_id": 0}]}], 3, "RGB")
    with pytest.raises(ValueError, match="MAX_OBJECTS"):
        CopyPaste([], 0, "RGB")


def test_semantic_data_is_refused_before_training(sources):
    with pytest.raises(ValueError, match="sem_seg_file_name"):  # found when the mapper is built
        CopyPaste([{**sources[0], "sem_seg_file_name": "label.png"}], 3, "RGB")
    from soft_d2.segmentation import build_sem_seg_mapper
    cfg = load_config("configs/quickstart/upernet_soft_norm_tiny_shapes.yaml", ["INPUT.COPY_PASTE.ENABLED", "True"])
    with pytest.raises(ValueError, match="INPUT.COPY_PASTE.ENABLED False"):
        build_sem_seg_mapper(cfg, is_train=True)
    assert build_sem_seg_mapper(cfg, is_train=False) is not None  # evaluation is unaffected


def test_mapper_pastes_in_training_only(sources, tmp_path):
    name = "copy_paste_test_train"
    target_path = str(tmp_path / "target.png")
    image, annotations = _target()
    Image.fromarray(image).save(target_path)
    dicts = [{"file_name": target_path, "height": H, "width": W, "image_id": 0, "annotations": annotations}] + sources
    DatasetCatalog.register(name, lambda: dicts)
    try:
        opts = ["DATASETS.TRAIN", f"('{name}',)", "INPUT.COPY_PASTE.ENABLED", "True", "INPUT.MIN_SIZE_TRAIN", "(120,)",
                "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.RANDOM_FLIP", "none"]
        cfg = load_config("configs/quickstart/mask_rcnn_soft_norm_tiny_shapes.yaml", opts)
        train_mapper = DetectionDatasetMapper(cfg, is_train=True)
        assert train_mapper.copy_paste is not None
        assert DetectionDatasetMapper(cfg, is_train=False).copy_paste is None
        np.random.seed(0)
        counts = [len(train_mapper(dicts[0])["instances"]) for _ in range(10)]
        assert min(counts) >= 1 and max(counts) > len(annotations)
        out = train_mapper(dicts[0])
        assert out["image"].shape == (3, H, W)
        assert out["instances"].gt_masks.polygons and len(out["instances"].gt_boxes) == len(out["instances"])
    finally:
        DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)

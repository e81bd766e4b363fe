"""Pictures of instances (boxes, masks, labels): after a detector's final evaluation (TEST.VIS_IMAGES)
each image's predictions beside its ground truth, in demo.py the predictions alone."""
from __future__ import annotations

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import annotations_to_instances, read_image
from detectron2.structures import Instances
from PIL import Image, ImageDraw

from ..d2.visualize import captioned, class_name, colour, tile, to_rgb


class Predictor:
    """Image file -> Instances in the image's own coordinates (the config's test-time resize)."""

    def __init__(self, cfg, model: torch.nn.Module):
        self.model = model
        self.format = cfg.INPUT.FORMAT
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")
        finally:
            self.model.train(was_training)


def draw_image_predictions(predictor: Predictor, image: np.ndarray, metadata, threshold: float) -> np.ndarray:
    """RGB picture of an image (in the predictor's INPUT.FORMAT) with its predictions above ``threshold``."""
    return draw_image_instances(predictor, image, predictions_above(predictor, image, threshold), metadata)


def predictions_above(predictor: Predictor, image: np.ndarray, threshold: float):
    """The image's predicted instances with a score of at least ``threshold``."""
    instances = predictor(image)
    return instances[instances.scores >= threshold]


def draw_image_instances(predictor: Predictor, image: np.ndarray, instances, metadata) -> np.ndarray:
    """RGB picture of an image (in the predictor's INPUT.FORMAT) with ``instances`` drawn on it."""
    return draw_instances(to_rgb(image, predictor.format), instances, list(getattr(metadata, "thing_classes", [])))


def draw_instances(rgb: np.ndarray, instances, class_names: list[str]) -> np.ndarray:
    """Predicted instances: masks blended at 50%, boxes and "class score" labels, one colour per instance."""
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    boxes = instances.pred_boxes.tensor.tolist() if instances.has("pred_boxes") else []
    labels = [f"{class_name(class_names, cls)} {score:.2f}"
              for cls, score in zip(instances.pred_classes.tolist(), instances.scores.tolist())]
    return draw_objects(rgb, boxes, labels, masks)


def ground_truth(record: dict, image_size: tuple[int, int], with_masks: bool) -> Instances:
    """A data-set record's annotations but crowd regions (as in training) as Instances: gt_boxes (XYXY,
    from any ``bbox_mode``), gt_classes and, ``with_masks``, gt_masks (bitmasks from polygons or RLE)."""
    annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    if not with_masks:
        annotations = [{k: v for k, v in a.items() if k != "segmentation"} for a in annotations]
    return annotations_to_instances(annotations, image_size, mask_format="bitmask")


def draw_ground_truth(rgb: np.ndarray, truth: Instances, class_names: list[str]) -> np.ndarray:
    """Ground-truth instances: masks blended at 50%, boxes and class-name labels, one colour per instance."""
    masks = truth.gt_masks.tensor.numpy() if truth.has("gt_masks") else None
    labels = [class_name(class_names, cls) for cls in truth.gt_classes.tolist()]
    return draw_objects(rgb, truth.gt_boxes.tensor.tolist(), labels, masks)


def draw_objects(rgb: np.ndarray, boxes: list, labels: list[str], masks=None) -> np.ndarray:
    """Objects on an RGB image, one colour each: ``masks`` (boolean H x W per object, or None) blended at
    50%, then the XYXY ``boxes`` with their ``labels`` above them."""
    picture = rgb.astype(np.float32).copy()
    colours = [colour(i) for i in range(len(labels))]
    for mask, rgb_colour in zip(masks if masks is not None else [], colours):
        picture[mask] = 0.5 * picture[mask] + 0.5 * np.array(rgb_colour, dtype=np.float32)
    image = Image.fromarray(picture.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for box, label, box_colour in zip(boxes, labels, colours):
        draw_labelled_box(draw, box, label, box_colour)
    return np.asarray(image)


def draw_labelled_box(draw: ImageDraw.ImageDraw, box: list[float], label: str, box_colour) -> None:
    """An XYXY box outline and its label on a filled strip just above it (inside the image)."""
    draw.rectangle(box, outline=box_colour, width=2)
    left, top, right, bottom = draw.textbbox((box[0], box[1]), label)
    y = max(0, box[1] - (bottom - top) - 2)
    draw.rectangle((box[0], y, box[0] + right - left + 2, y + bottom - top + 2), fill=box_colour)
    draw.text((box[0] + 1, y), label, fill=(0, 0, 0))


def draw_prediction_and_truth(predictor: Predictor, record: dict, metadata, threshold: float,
                              with_masks: bool) -> np.ndarray:
    """Captioned "prediction" | "ground truth" panels of one data-set record's image."""
    image = read_image(record["file_name"], format=predictor.format)
    truth = ground_truth(record, image.shape[:2], with_masks)
    class_names = list(getattr(metadata, "thing_classes", []))
    panels = [captioned(draw_image_predictions(predictor, image, metadata, threshold), "prediction"),
              captioned(draw_ground_truth(to_rgb(image, predictor.format), truth, class_names), "ground truth")]
    return np.concatenate(panels, axis=1)


def save_dataset_predictions(cfg, model, dataset_name: str, num_images: int, out_path: str) -> str:
    """Prediction | ground truth (masks for MODEL.MASK_ON) for the first ``num_images`` images of a
    registered data set, in one picture, two images a row."""
    predictor = Predictor(cfg, model)
    metadata = MetadataCatalog.get(dataset_name)
    pictures = [draw_prediction_and_truth(predictor, record, metadata, cfg.TEST.VIS_THRESHOLD, cfg.MODEL.MASK_ON)
                for record in DatasetCatalog.get(dataset_name)[:num_images]]
    tile(pictures, columns=2).save(out_path)
    return out_path

"""Pictures of instance predictions (boxes, masks, labels): after a detector's final evaluation
(TEST.VIS_IMAGES) and in demo.py."""
from __future__ import annotations

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from PIL import Image, ImageDraw

from ..d2.visualize import colour, tile


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


def draw_predictions(predictor: Predictor, path: str, metadata, threshold: float) -> np.ndarray:
    """RGB picture of one image file with its predictions above ``threshold``."""
    return draw_image_predictions(predictor, read_image(path, format=predictor.format), metadata, threshold)


def draw_image_predictions(predictor: Predictor, image: np.ndarray, metadata, threshold: float) -> np.ndarray:
    """RGB picture of an image (in the predictor's INPUT.FORMAT) with its predictions above ``threshold``."""
    return draw_image_instances(predictor, image, predictions_above(predictor, image, threshold), metadata)


def predictions_above(predictor: Predictor, image: np.ndarray, threshold: float):
    """The image's predicted instances with a score of at least ``threshold``."""
    instances = predictor(image)
    return instances[instances.scores >= threshold]


def draw_image_instances(predictor: Predictor, image: np.ndarray, instances, metadata) -> np.ndarray:
    """RGB picture of an image (in the predictor's INPUT.FORMAT) with ``instances`` drawn on it."""
    rgb = image[:, :, ::-1] if predictor.format == "BGR" else image
    return draw_instances(rgb, instances, list(getattr(metadata, "thing_classes", [])))


def draw_instances(rgb: np.ndarray, instances, class_names: list[str]) -> np.ndarray:
    """Masks blended at 50%, boxes and "class score" labels, one colour per instance."""
    picture = rgb.astype(np.float32).copy()
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else [None] * len(instances)
    colours = [colour(i) for i in range(len(instances))]
    for mask, rgb_colour in zip(masks, colours):
        if mask is not None:
            picture[mask] = 0.5 * picture[mask] + 0.5 * np.array(rgb_colour, dtype=np.float32)
    image = Image.fromarray(picture.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes = instances.pred_boxes.tensor.tolist() if instances.has("pred_boxes") else []
    for box, cls, score, box_colour in zip(boxes, instances.pred_classes.tolist(), instances.scores.tolist(), colours):
        draw.rectangle(box, outline=box_colour, width=2)
        name = class_names[cls] if cls < len(class_names) else str(cls)
        label = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label)
        y = max(0, box[1] - (bottom - top) - 2)
        draw.rectangle((box[0], y, box[0] + right - left + 2, y + bottom - top + 2), fill=box_colour)
        draw.text((box[0] + 1, y), label, fill=(0, 0, 0))
    return np.asarray(image)


def save_dataset_predictions(cfg, model, dataset_name: str, num_images: int, out_path: str) -> str:
    """Draw predictions on the first ``num_images`` images of a registered data set into one picture."""
    from detectron2.data import DatasetCatalog

    records = DatasetCatalog.get(dataset_name)[:num_images]
    predictor = Predictor(cfg, model)
    metadata = MetadataCatalog.get(dataset_name)
    pictures = [draw_predictions(predictor, r["file_name"], metadata, cfg.TEST.VIS_THRESHOLD) for r in records]
    tile(pictures).save(out_path)
    return out_path

"""Pictures of semantic-segmentation predictions (PIL only): each image with its predicted classes
blended in, next to its ground truth (after the final evaluation, TEST.VIS_IMAGES) or, for an image
without one (demo.py), next to the image itself with a legend of the predicted classes."""
from __future__ import annotations

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image, ImageDraw

from ..d2.visualize import class_name, colour, tile, to_rgb
from .mapper import build_sem_seg_augmentations


@torch.no_grad()
def predict_labels(cfg, model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Class per pixel of ``image`` (in the image's own size) with the config's test-time resize."""
    height, width = image.shape[:2]
    transforms = [aug.get_transform(image) for aug in build_sem_seg_augmentations(cfg, is_train=False)]
    for t in transforms:
        image = t.apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
    was_training = model.training
    model.eval()
    try:
        logits = model([{"image": tensor, "height": height, "width": width}])[0]["sem_seg"]
    finally:
        model.train(was_training)
    return logits.argmax(dim=0).cpu().numpy()


def blend_labels(rgb: np.ndarray, labels: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """Classes 1.. blended at 50% in the palette's colours; class 0 (background) and ignored pixels as they are."""
    picture = rgb.astype(np.float32).copy()
    for cls in np.unique(labels):
        if cls == 0 or cls == ignore_label:
            continue
        mask = labels == cls
        picture[mask] = 0.5 * picture[mask] + 0.5 * np.array(colour(cls - 1), dtype=np.float32)
    return picture.clip(0, 255).astype(np.uint8)


def pixel_shares(labels: np.ndarray, ignore_label: int = 255) -> list[tuple[int, float]]:
    """(class, share of the labelled pixels) of every class present, largest share first (ties: lower class)."""
    classes, counts = np.unique(labels[labels != ignore_label], return_counts=True)
    total = counts.sum()
    return sorted(((int(c), float(n) / total) for c, n in zip(classes, counts)), key=lambda cs: (-cs[1], cs[0]))


def draw_legend(picture: np.ndarray, classes: list[int], class_names: list[str]) -> np.ndarray:
    """A palette square and the name of each of ``classes`` (1..: the coloured ones), top left."""
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    y = 2
    for cls in classes:
        name = class_name(class_names, cls)
        left, top, right, bottom = draw.textbbox((0, 0), name)
        height = max(bottom - top, 10)
        draw.rectangle((2, y, 2 + right - left + height + 6, y + height + 2), fill=(0, 0, 0))
        draw.rectangle((3, y + 1, 3 + height, y + 1 + height), fill=colour(cls - 1))
        draw.text((6 + height, y + 1 - top), name, fill=(255, 255, 255))
        y += height + 3
    return np.asarray(image)


def draw_label_prediction(rgb: np.ndarray, labels: np.ndarray, class_names: list[str],
                          ignore_label: int = 255) -> np.ndarray:
    """Image | predicted classes blended in, with a legend of the coloured classes (largest first):
    the picture of one image without ground truth."""
    coloured = [cls for cls, _ in pixel_shares(labels, ignore_label) if cls != 0]
    predicted = draw_legend(blend_labels(rgb, labels, ignore_label), coloured, class_names)
    return np.concatenate([rgb.astype(np.uint8), predicted], axis=1)


def save_sem_seg_predictions(cfg, model, dataset_name: str, num_images: int, out_path: str) -> str:
    """Prediction | ground truth for the first ``num_images`` images of a data set, in one picture."""
    ignore = MetadataCatalog.get(dataset_name).get("ignore_label", 255)
    pictures = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        rgb = to_rgb(image, cfg.INPUT.FORMAT)
        truth = np.asarray(Image.open(record["sem_seg_file_name"]))
        predicted = blend_labels(rgb, predict_labels(cfg, model, image), ignore)
        pictures.append(np.concatenate([predicted, blend_labels(rgb, truth, ignore)], axis=1))
    tile(pictures, columns=2).save(out_path)
    return out_path

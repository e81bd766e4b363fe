"""Pictures of semantic-segmentation predictions (PIL only):
each image with its predicted classes blended in, next to its ground truth."""
from __future__ import annotations

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from ..d2.visualize import colour, tile
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


def save_sem_seg_predictions(cfg, model, dataset_name: str, num_images: int, out_path: str) -> str:
    """Prediction | ground truth for the first ``num_images`` images of a data set, in one picture."""
    ignore = MetadataCatalog.get(dataset_name).get("ignore_label", 255)
    pictures = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        truth = np.asarray(Image.open(record["sem_seg_file_name"]))
        predicted = blend_labels(rgb, predict_labels(cfg, model, image), ignore)
        pictures.append(np.concatenate([predicted, blend_labels(rgb, truth, ignore)], axis=1))
    tile(pictures, columns=2).save(out_path)
    return out_path

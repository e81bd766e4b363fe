"""A whole Detectron2 detector (RetinaNet or Mask R-CNN) as one image-in, tensors-out module that
torch.export and the ONNX exporter can trace with a dynamic image height and width.

Detectron2's inference code branches in Python on how many boxes survive a threshold or NMS
(``if tensor.numel() == 0``, ``if not valid.all()``, per-class NMS loops chosen by box count);
those counts are data-dependent, so an exporter cannot decide the branches. ``ExportableDetector``
runs the detector's own modules (backbone, heads, anchor generators, box coders, RoI poolers,
box and mask heads) and does the selection steps (top-k, score threshold, per-class NMS, top-N,
clipping) with tensor operations only, in the order Detectron2 does them: its outputs equal the
model's own ``model([{"image": ...}])`` on the same image (tested), up to the order of exact
score ties.

Inputs: ``image [3, H', W']``, one image in the model's input format (``cfg.INPUT.FORMAT``,
0..255) at the size it is evaluated at (no resizing inside), padded at the bottom and right to a
multiple of the backbone's size divisibility, and ``image_size`` (int64 ``(H, W)``, the image
inside the padding); ``pad(image)`` makes both. Taking the padding as an input keeps the padded
sides plain multiples of 32 for the exporter. Outputs, in input-image pixels:
``boxes [N, 4]`` (x1, y1, x2, y2), ``scores [N]``, ``classes [N]`` (int64) and, for Mask R-CNN,
``masks [N, 1, M, M]``: the mask head's probabilities for the predicted class inside each box
(Detectron2 pastes them into the image with a 0.5 threshold; that step is left to the caller).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes

OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")


def top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of a 1-D tensor (all of them when it is shorter), best first; k is symbolic-safe."""
    return scores.topk(torch.sym_min(k, scores.shape[0]))


def clip_boxes(boxes: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """Boxes.clip with the image size as tensors (an input of the exported program)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    zero = boxes.new_zeros(())
    return torch.stack((x1.clamp(zero, width), y1.clamp(zero, height), x2.clamp(zero, width), y2.clamp(zero, height)), -1)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group: groups are moved apart by more than the largest coordinate, so boxes
    of different groups never overlap; indices best first. Works for zero boxes without a branch."""
    span = torch.cat((boxes.flatten(), boxes.new_zeros(1))).max() + 1
    return nms(boxes + (groups.to(boxes) * span)[:, None], scores, iou_threshold)


def roi_pool(pooler: ROIPooler, features: list[Tensor], boxes: Tensor) -> Tensor:
    """ROIPooler.forward for one image's boxes: each box pooled from the FPN level its size selects,
    with the pooler's own per-level RoIAlign modules (its batching of box counts into a tensor is
    what an exporter cannot trace)."""
    rois = torch.cat((boxes.new_zeros(boxes.shape[0], 1), boxes), dim=1)
    if len(pooler.level_poolers) == 1:
        return pooler.level_poolers[0](features[0], rois)
    levels = assign_boxes_to_levels([Boxes(boxes)], pooler.min_level, pooler.max_level,
                                    pooler.canonical_box_size, pooler.canonical_level)
    out = rois.new_zeros(boxes.shape[0], features[0].shape[1], *pooler.output_size)
    for level, level_pooler in enumerate(pooler.level_poolers):
        index = (levels == level).nonzero()[:, 0]
        out = out.index_put((index,), level_pooler(features[level], rois[index]))
    return out


class ExportableDetector(nn.Module):
    """A built RetinaNet or GeneralizedRCNN (eval mode) as ``image -> (boxes, scores, classes[, masks])``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, (DenseDetector, GeneralizedRCNN)):
            raise TypeError(f"ExportableDetector takes a Detectron2 RetinaNet or GeneralizedRCNN, got {type(model).__name__}")
        if isinstance(model, GeneralizedRCNN) and getattr(model.roi_heads, "keypoint_on", False):
            raise ValueError("ExportableDetector does not export keypoint heads (MODEL.KEYPOINT_ON)")
        self.model = model.eval()
        self.has_masks = isinstance(model, GeneralizedRCNN) and bool(getattr(model.roi_heads, "mask_on", False))
        self.output_names = list(OUTPUT_NAMES[: 4 if self.has_masks else 3])

    def pad(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """The inputs for one image ``[3, H, W]``: the image padded at the bottom and right to the
        backbone's size divisibility, and its size ``(H, W)`` as an int64 tensor."""
        d = max(1, self.model.backbone.size_divisibility)
        height, width = image.shape[-2:]
        padded = F.pad(image, (0, (-width) % d, 0, (-height) % d))
        return padded, torch.tensor([height, width], dtype=torch.int64)

    def normalize(self, image: Tensor, image_size: Tensor) -> Tensor:
        """Normalised image, zero outside ``image_size``: ImageList.from_tensors' padding, whatever
        the padded pixels hold."""
        m = self.model
        x = (image.to(m.pixel_mean) - m.pixel_mean) / m.pixel_std
        rows = torch.arange(x.shape[-2], device=x.device) < image_size[0]
        cols = torch.arange(x.shape[-1], device=x.device) < image_size[1]
        return x * (rows[:, None] & cols[None, :]).to(x)

    def forward(self, image: Tensor, image_size: Tensor) -> tuple[Tensor, ...]:
        """``image``: ``[3, H', W']`` with H', W' multiples of the size divisibility (``pad``);
        ``image_size``: the size of the image inside it, int64 ``(H, W)``."""
        x = self.normalize(image, image_size)
        features = self.model.backbone(x[None])
        height, width = image_size[0].to(x), image_size[1].to(x)
        if isinstance(self.model, DenseDetector):
            boxes, scores, classes = self.retinanet(features, height, width)
            masks = None
        else:
            boxes, scores, classes, masks = self.rcnn(features, height, width)
        keep = nonempty(boxes)  # detector_postprocess drops boxes that clipping emptied
        out = (boxes[keep], scores[keep], classes[keep])
        return out + (masks[keep],) if masks is not None else out

    def retinanet(self, features: dict[str, Tensor], height, width) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        levels = [features[f] for f in m.head_in_features]
        logits, deltas = m._transpose_dense_predictions(m.head(levels), [m.num_classes, 4])
        anchors = m.anchor_generator(levels)
        boxes, scores, classes = [], [], []
        for anchors_i, logits_i, deltas_i in zip(anchors, logits, deltas):
            # Detectron2 thresholds, then keeps the top k: the same set as the top k, thresholded
            s, idx = top_k(logits_i[0].sigmoid().flatten(), m.test_topk_candidates)
            keep = s > m.test_score_thresh
            s, idx = s[keep], idx[keep]
            anchor_idx, cls = idx // m.num_classes, idx % m.num_classes
            boxes.append(m.box2box_transform.apply_deltas(deltas_i[0][anchor_idx], anchors_i.tensor[anchor_idx]))
            scores.append(s)
            classes.append(cls)
        boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
        keep = batched_nms(boxes, scores, classes, m.test_nms_thresh)[: m.max_detections_per_image]
        return clip_boxes(boxes[keep], height, width), scores[keep], classes[keep]

    def proposals(self, features: dict[str, Tensor], height, width) -> Tensor:
        """RPN proposals of the one image, best first (find_top_rpn_proposals at test time)."""
        rpn = self.model.proposal_generator
        levels = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(levels)
        objectness, anchor_deltas = rpn.rpn_head(levels)
        objectness = [o.permute(0, 2, 3, 1).flatten(1) for o in objectness]
        box_dim = rpn.anchor_generator.box_dim
        anchor_deltas = [d.view(d.shape[0], -1, box_dim, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
                         for d in anchor_deltas]
        decoded = rpn._decode_proposals(anchors, anchor_deltas)
        boxes, scores, level_ids = [], [], []
        for level, (boxes_i, logits_i) in enumerate(zip(decoded, objectness)):
            s, idx = top_k(logits_i[0], rpn.pre_nms_topk[False])
            boxes.append(boxes_i[0][idx])
            scores.append(s)
            level_ids.append(torch.full_like(idx, level))
        boxes, scores, level_ids = torch.cat(boxes), torch.cat(scores), torch.cat(level_ids)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, level_ids = clip_boxes(boxes[valid], height, width), scores[valid], level_ids[valid]
        keep = nonempty(boxes, rpn.min_box_size)
        boxes, scores, level_ids = boxes[keep], scores[keep], level_ids[keep]
        keep = batched_nms(boxes, scores, level_ids, rpn.nms_thresh)[: rpn.post_nms_topk[False]]
        return boxes[keep]

    def rcnn(self, features: dict[str, Tensor], height, width):
        roi = self.model.roi_heads
        proposals = self.proposals(features, height, width)
        box_features = roi_pool(roi.box_pooler, [features[f] for f in roi.box_in_features], proposals)
        predictor = roi.box_predictor
        logits, proposal_deltas = predictor(roi.box_head(box_features))
        probs = F.softmax(logits, dim=-1)
        boxes = predictor.box2box_transform.apply_deltas(proposal_deltas, proposals)  # R x (C*4)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(probs).all(dim=1)
        boxes, probs = boxes[valid], probs[valid][:, :-1]  # the last column is background
        num_reg_classes = boxes.shape[1] // 4
        boxes = clip_boxes(boxes.reshape(-1, 4), height, width).view(-1, num_reg_classes, 4)
        passed = probs > predictor.test_score_thresh  # R x C
        indices = passed.nonzero()
        boxes = boxes[indices[:, 0], 0] if num_reg_classes == 1 else boxes[passed]
        scores, classes = probs[passed], indices[:, 1]
        keep = batched_nms(boxes, scores, classes, predictor.test_nms_thresh)
        if predictor.test_topk_per_image >= 0:
            keep = keep[: predictor.test_topk_per_image]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        masks = self.masks(features, boxes, classes) if self.has_masks else None
        return boxes, scores, classes, masks

    def masks(self, features: dict[str, Tensor], boxes: Tensor, classes: Tensor) -> Tensor:
        roi = self.model.roi_heads
        pooled = roi_pool(roi.mask_pooler, [features[f] for f in roi.mask_in_features], boxes)
        logits = roi.mask_head.layers(pooled)  # N x C x M x M (N x 1 x M x M when class-agnostic)
        if logits.shape[1] > 1:
            logits = logits[torch.arange(logits.shape[0]), classes][:, None]
        return logits.sigmoid()

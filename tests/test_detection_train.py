"""train_net.py end to end on small built-in splits: quickstart train+evaluate+picture, --resume,
--eval-only, a 2-process GLOO run, AMP, the optimizer's groups and demo.py; the picture of
predictions beside the ground truth on a one-image data set."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from PIL import Image

import train_net
from detection_helpers import QUICKSTART_RCNN, QUICKSTART_RETINANET, ROOT, SMALL_INPUT, load_cfg, \
    make_small_builtin, quick_train_opts, run_train_net
from soft_d2.d2.solver import build_param_groups
from soft_d2.d2.visualize import CAPTION_HEIGHT, colour
from soft_d2.detection.visualize import ground_truth, save_dataset_predictions


@pytest.fixture()
def small_data(tmp_path, monkeypatch):
    root = str(tmp_path / "datasets")
    make_small_builtin(root, train_images=8, val_images=4)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    return root


# Every candidate kept (score threshold 0): a 3-step model's scores are near the focal-loss prior,
# below the configs' thresholds, and an empty prediction file would compare equal to any other.
ALL_PREDICTIONS = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def _predictions(output_dir: str) -> list[dict]:
    """The raw detections COCOEvaluator wrote (boxes, scores, classes, masks) for the val split."""
    with open(os.path.join(output_dir, "inference", "soft_shapes_val", "coco_instances_results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("config", [QUICKSTART_RCNN, QUICKSTART_RETINANET], ids=["mask_rcnn", "retinanet"])
def test_quickstart_trains_evaluates_and_reproduces_with_eval_only(config, small_data, tmp_path):
    out = str(tmp_path / "run")
    results = run_train_net(config, quick_train_opts(out, max_iter=3) + ALL_PREDICTIONS)
    assert ("segm" in results) == ("mask_rcnn" in config)
    for task in results:  # (APs/APm/APl are NaN for an area range without objects in the 4 images)
        assert all(math.isfinite(results[task][k]) and 0.0 <= results[task][k] <= 100.0
                   for k in ("AP", "AP50", "AP75")), results[task]
    for name in ("model_final.pth", "last_checkpoint", "predictions.jpg", "results.json", "metrics.json"):
        assert os.path.exists(os.path.join(out, name)), name
    drawn = DatasetCatalog.get("soft_shapes_val")[:2]  # TEST.VIS_IMAGES 2: one row of prediction | ground truth
    assert Image.open(os.path.join(out, "predictions.jpg")).size == (
        2 * 2 * max(r["width"] for r in drawn), max(r["height"] for r in drawn) + CAPTION_HEIGHT)
    trained = _predictions(out)
    assert len(trained) >= 4 * 10 and all(math.isfinite(p["score"]) for p in trained)  # 4 val images
    # --eval-only from the saved checkpoint reproduces the run's raw predictions and numbers.
    eval_opts = quick_train_opts(str(tmp_path / "eval"), max_iter=3) + ALL_PREDICTIONS
    again = run_train_net(config, eval_opts + ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")], "--eval-only")
    assert _predictions(str(tmp_path / "eval")) == trained
    for task in results:
        for metric, value in results[task].items():
            assert again[task][metric] == pytest.approx(value, abs=1e-6, nan_ok=True), (task, metric)
    # ... and other weights (one backbone tensor changed) give other predictions: the comparison
    # above can fail.
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    name = next(k for k in state["model"] if k.startswith("backbone.bottom_up") and k.endswith("attn.q.weight"))
    state["model"][name] = state["model"][name] + 0.05 * torch.randn_like(state["model"][name])
    torch.save(state, str(tmp_path / "other.pth"))
    eval_opts = quick_train_opts(str(tmp_path / "other"), max_iter=3) + ALL_PREDICTIONS
    run_train_net(config, eval_opts + ["MODEL.WEIGHTS", str(tmp_path / "other.pth")], "--eval-only")
    assert _predictions(str(tmp_path / "other")) != trained


class RecordLR(HookBase):
    def __init__(self):
        self.seen = {}

    def after_step(self):
        self.seen[self.trainer.iter] = [g["lr"] for g in self.trainer.optimizer.param_groups]


def train_recording(cfg, resume: bool) -> tuple[RecordLR, "train_net.Trainer"]:
    trainer = train_net.Trainer(cfg)
    recorder = RecordLR()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return recorder, trainer


def test_resume_continues_from_saved_iteration_with_same_lr(small_data, tmp_path):
    out = str(tmp_path / "run")
    opts = quick_train_opts(out, max_iter=6) + ["SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "0",
                                                "SOLVER.BACKBONE_MULTIPLIER", "0.5"]
    cfg = load_cfg(QUICKSTART_RCNN, opts)
    cfg.freeze()
    full, _ = train_recording(cfg, resume=False)
    assert os.path.exists(os.path.join(out, "model_0000002.pth"))
    # Pretend the run died after iteration 2: the last checkpoint is the one written then.
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    resumed, trainer = train_recording(cfg, resume=True)
    assert trainer.start_iter == 3
    assert sorted(resumed.seen) == [3, 4, 5]
    for it in (3, 4, 5):  # warm-up is still running, so the lr differs at every iteration
        assert resumed.seen[it] == pytest.approx(full.seen[it])
    assert full.seen[3] != pytest.approx(full.seen[4])
    # --resume through the command line picks up the final checkpoint and has nothing left to do.
    run_train_net(QUICKSTART_RCNN, opts, "--resume")


def test_two_process_gloo_run(small_data, tmp_path):
    out = str(tmp_path / "ddp")
    env = {**os.environ, "DETECTRON2_DATASETS": small_data, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--num-gpus", "2", "--config-file", QUICKSTART_RCNN,
           *quick_train_opts(out, max_iter=2, batch=2), "TEST.VIS_IMAGES", "0", "MODEL.SOFT.STEM_NORM", "SyncBN"]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert os.path.exists(os.path.join(out, "model_final.pth"))
    results = json.load(open(os.path.join(out, "results.json")))
    assert "bbox" in results and "segm" in results
    assert "World size: 2" in proc.stdout + proc.stderr


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_amp_step(precision, small_data, tmp_path):
    cfg = load_cfg(QUICKSTART_RETINANET, quick_train_opts(str(tmp_path / precision), max_iter=1) +
                   ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", precision])
    cfg.freeze()
    trainer = train_net.Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert type(trainer._trainer).__name__ == "MixedPrecisionTrainer"
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > 0.9 * len(before)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_param_groups():
    cfg = load_cfg(QUICKSTART_RCNN, ["SOLVER.BACKBONE_MULTIPLIER", "0.1", "SOLVER.BASE_LR", "0.001"])
    model = train_net.Trainer.build_model(cfg)
    groups = build_param_groups(cfg, model)
    by_name = {n: g for g in groups for n in g["names"]}
    assert len(by_name) == sum(1 for p in model.parameters() if p.requires_grad)
    soft = "backbone.bottom_up.model."
    assert by_name[soft + "stages.0.pos_embed"]["weight_decay"] == 0.0
    assert by_name[soft + "stages.3.cls_token"]["weight_decay"] == 0.0
    assert by_name[soft + "stages.0.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name[soft + "stages.0.downsample.conv1.bn.weight"]["weight_decay"] == 0.0
    assert by_name[soft + "stages.0.blocks.0.attn.q.weight"]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    assert by_name[soft + "stages.0.blocks.0.attn.q.weight"]["lr"] == pytest.approx(1e-4)
    assert by_name["backbone.fpn_lateral3.weight"]["lr"] == pytest.approx(1e-3)
    assert by_name["roi_heads.box_predictor.cls_score.weight"]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    optimizer = train_net.Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)


def test_full_model_gradient_clipping():
    cfg = load_cfg(QUICKSTART_RCNN)
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    model = torch.nn.Linear(4, 4)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    from soft_d2.d2.solver import build_optimizer
    optimizer = build_optimizer(cfg, model)
    model(torch.randn(8, 4)).pow(2).sum().mul(1000).backward()
    optimizer.step()
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(0.5, rel=1e-4)


def test_demo_draws_predictions(small_data, tmp_path):
    import demo

    out = str(tmp_path / "run")
    run_train_net(QUICKSTART_RCNN, quick_train_opts(out, max_iter=1) + ["TEST.VIS_IMAGES", "0"])
    images = os.path.join(small_data, "soft_shapes_v1", "val", "*.jpg")
    written = demo.main(["--config-file", QUICKSTART_RCNN, "--input", images, "--output", str(tmp_path / "demo"),
                         "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                         "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"])
    assert len(written) == 4 and all(os.path.getsize(p) > 0 for p in written)


# A 64 x 48 grey image with a "triangle" (XYWH box 10, 8, 30, 20: XYXY 10, 8, 40, 28) whose polygon
# mask lies inside the box, and a crowd region at the bottom right, drawn neither.
GREY = 128
TRIANGLE = {"bbox": [10, 8, 30, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0,
            "segmentation": [[20, 14, 34, 14, 34, 24, 20, 24]]}
CROWD = {"bbox": [46, 32, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 1,
         "segmentation": [[46, 32, 56, 32, 56, 42, 46, 42]]}


@pytest.fixture()
def one_image_set(tmp_path):
    """``vis_one_image`` registered with three records of the same image (removed afterwards)."""
    path = str(tmp_path / "grey.png")
    Image.new("RGB", (64, 48), (GREY,) * 3).save(path)
    name = "vis_one_image"
    records = [{"file_name": path, "image_id": i, "height": 48, "width": 64, "annotations": [TRIANGLE, CROWD]}
               for i in range(3)]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["circle", "triangle", "square"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.fixture(scope="module")
def rcnn_cfg_and_model():
    cfg = load_cfg(QUICKSTART_RCNN, SMALL_INPUT + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    return cfg, build_model(cfg)


def draw_picture(cfg, model, name: str, num_images: int, threshold: float, path: str) -> np.ndarray:
    cfg = cfg.clone()
    cfg.TEST.VIS_THRESHOLD = threshold
    return np.asarray(Image.open(save_dataset_predictions(cfg, model, name, num_images, path)))  # png: lossless


def test_picture_is_prediction_beside_ground_truth(one_image_set, rcnn_cfg_and_model, tmp_path):
    cfg, model = rcnn_cfg_and_model
    picture = draw_picture(cfg, model, one_image_set, 3, 1.01, str(tmp_path / "none.png"))  # scores are below 1
    cell_h = 48 + CAPTION_HEIGHT
    assert picture.shape == (2 * cell_h, 2 * 2 * 64, 3)  # two images a row, each two panels wide
    assert (picture[cell_h:, 2 * 64:] == 0).all()  # no third pair in the second row
    captions, predicted, truth = picture[:CAPTION_HEIGHT], picture[CAPTION_HEIGHT:cell_h, :64], \
        picture[CAPTION_HEIGHT:cell_h, 64:128]
    assert (captions[:, :64] > 0).any() and (captions[:, :64] != captions[:, 64:128]).any()  # two texts
    assert (predicted == GREY).all()  # nothing predicted: the plain image
    assert (truth[20, 40] == colour(0)).all() and (truth[26, 10] == colour(0)).all()  # box outline (XYXY)
    assert np.abs(truth[19, 27].astype(int) - (np.array(colour(0)) + GREY) // 2).max() <= 1  # mask blended
    assert (truth[30:, 42:] == GREY).all()  # away from the triangle: the crowd region is not drawn
    assert (picture[CAPTION_HEIGHT:cell_h, 128:] == picture[CAPTION_HEIGHT:cell_h, :128]).all()  # same record
    # Every candidate drawn (threshold 0): the prediction panel shows them.
    picture = draw_picture(cfg, model, one_image_set, 1, 0.0, str(tmp_path / "all.png"))
    assert picture.shape == (cell_h, 2 * 64, 3)
    assert (picture[CAPTION_HEIGHT:, :64] != GREY).any()
    assert (picture[CAPTION_HEIGHT:, 64:] == truth).all()


def test_ground_truth_masks_only_when_asked():
    with_masks, boxes_only = (ground_truth({"annotations": [TRIANGLE, CROWD]}, (48, 64), m) for m in (True, False))
    assert len(with_masks) == len(boxes_only) == 1  # the crowd region left out
    assert with_masks.gt_boxes.tensor.tolist() == [[10.0, 8.0, 40.0, 28.0]] and with_masks.gt_classes.tolist() == [1]
    assert with_masks.gt_masks.tensor.sum() == 14 * 10 and not boxes_only.has("gt_masks")

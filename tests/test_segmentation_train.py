"""train_net.py end to end for semantic segmentation: the quickstart trains a few iterations on small
built-in splits and reports mIoU; --eval-only reproduces it; a missing ADE20K stops before training."""
from __future__ import annotations

import json
import os

import pytest

from detection_helpers import run_train_net
from segmentation_helpers import ADE20K_CONFIGS, QUICKSTART_UPERNET, SMALL_SOFT, make_small_sem_seg, quick_seg_opts


@pytest.fixture()
def small_sem_seg(tmp_path, monkeypatch):
    root = str(tmp_path / "datasets")
    make_small_sem_seg(root, train_images=6, val_images=3)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    return root


def test_quickstart_trains_and_reports_miou(small_sem_seg, tmp_path):
    out = str(tmp_path / "run")
    results = run_train_net(QUICKSTART_UPERNET, quick_seg_opts(out, max_iter=3) + ["TEST.VIS_IMAGES", "2"])
    metrics = results["sem_seg"]
    assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 < metrics["pACC"] <= 100.0
    assert {f"IoU-{c}" for c in ("background", "circle", "triangle", "square")} <= set(metrics)
    for name in ("model_final.pth", "results.json", "metrics.json", "predictions.jpg"):
        assert os.path.exists(os.path.join(out, name)), name
    assert json.load(open(os.path.join(out, "results.json")))["sem_seg"]["mIoU"] == pytest.approx(metrics["mIoU"])
    logged = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert any("loss_sem_seg_aux" in row for row in logged)
    again = run_train_net(QUICKSTART_UPERNET, quick_seg_opts(str(tmp_path / "eval")) +
                     ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")], "--eval-only")
    assert again["sem_seg"]["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)


def test_ade20k_config_without_data_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        run_train_net(ADE20K_CONFIGS[0], SMALL_SOFT + ["OUTPUT_DIR", str(tmp_path / "out")])
    assert not os.path.exists(os.path.join(tmp_path, "out", "model_final.pth"))

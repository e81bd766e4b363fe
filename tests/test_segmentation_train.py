"""train_net.py end to end for semantic segmentation: the quickstart trains a few iterations on small
built-in splits and reports mIoU; --eval-only reproduces it; a missing ADE20K stops before training;
a seeded run repeats exactly; tools/fit_one_batch.py reports per-class accuracy."""
from __future__ import annotations

import glob
import importlib.util
import json
import os

import pytest
import torch

from detection_helpers import run_train_net
from segmentation_helpers import ADE20K_CONFIGS, QUICKSTART_UPERNET, ROOT, SMALL_SOFT, make_small_sem_seg, quick_seg_opts
from soft_d2.config import load_config


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


def test_seeded_runs_repeat_exactly(small_sem_seg, tmp_path):
    """The quickstart's SEED fixes init, data order and augmentation (one loader worker, as in the
    config): the same seed gives the same weights, another seed other weights."""
    quickstarts = glob.glob(os.path.join(os.path.dirname(QUICKSTART_UPERNET), "*.yaml"))
    assert len(quickstarts) == 5 and all(load_config(c, []).SEED >= 0 for c in quickstarts)

    def final_weights(name, *seed):
        out = str(tmp_path / name)
        run_train_net(QUICKSTART_UPERNET, quick_seg_opts(out, max_iter=2) + SMALL_SOFT +
                      ["DATALOADER.NUM_WORKERS", "1", "TEST.VIS_IMAGES", "0", *seed])
        return torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]

    first, again, other = final_weights("a"), final_weights("b"), final_weights("c", "SEED", "1")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_fit_one_batch_tool_reports_every_class(small_sem_seg, capsys):
    """tools/fit_one_batch.py fits one batch and reports the loss and each present class's accuracy."""
    spec = importlib.util.spec_from_file_location("fit_one_batch", os.path.join(ROOT, "tools", "fit_one_batch.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    opts = SMALL_SOFT + ["INPUT.SEG_RESIZE.SHORT_SIDE", "96", "INPUT.SEG_RESIZE.LONG_SIDE", "160",
                         "INPUT.CROP.SIZE", "(64, 64)", "SOLVER.IMS_PER_BATCH", "4"]
    tool.main(["--config-file", QUICKSTART_UPERNET, "--steps", "4", "--every", "2", "--", *opts])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("4 crops of soft_shapes_sem_seg_train")
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 2", "step 4"]
    assert all("background" in line and "%" in line for line in steps)
    with pytest.raises(SystemExit, match="SemanticSegmentor"):
        tool.main(["--config-file", os.path.join(ROOT, "configs/quickstart/retinanet_soft_norm_tiny_shapes.yaml")])

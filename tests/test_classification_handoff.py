"""The pipeline's seam: a checkpoint of classification/train.py is Detectron2's MODEL.WEIGHTS, and
the trainer runs as 2 GLOO processes under torchrun (classification/dist_train.sh)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("detectron2")

import train_net  # noqa: E402
from classification.train import main  # noqa: E402
from classification_helpers import ROOT, SMALL_MODEL, config, fast_options, tiny_imagefolder  # noqa: E402
from detection_helpers import QUICKSTART_RETINANET, load_cfg, make_small_builtin, quick_train_opts  # noqa: E402
from soft_d2.data.shapes_classification import CLASSES  # noqa: E402
from soft_d2.d2.checkpoint import find_soft_model  # noqa: E402
from soft_d2.model.checkpoint import read_checkpoint  # noqa: E402


def test_pretrained_checkpoint_fine_tunes_in_detectron2(tmp_path, monkeypatch):
    data = tiny_imagefolder(str(tmp_path / "cls"))
    pretrain = str(tmp_path / "pretrain")
    main(config(data, pretrain, model="soft_norm_tiny", max_steps=2))  # the detection quickstart's variant
    weights = os.path.join(pretrain, "last.pth")
    make_small_builtin(str(tmp_path / "det"), train_images=4, val_images=2)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "det"))

    # The quickstart trains a half-width SOFT-Norm from scratch; [] restores soft_norm_tiny's own widths.
    cfg = load_cfg(QUICKSTART_RETINANET, quick_train_opts(str(tmp_path / "det_out"), max_iter=2) +
                   ["MODEL.WEIGHTS", weights, "TEST.EVAL_PERIOD", "0", "MODEL.SOFT.EMBED_DIMS", "[]",
                    "MODEL.SOFT.NUM_HEADS", "[]"])
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    _, soft = find_soft_model(trainer.model)
    ema = read_checkpoint(weights)["state_dict_ema"]  # Detectron2 loads the EMA weights, as for releases
    backbone = soft.state_dict()
    compared = [k for k in backbone if not k.endswith("num_batches_tracked")]
    assert len(compared) > 100 and all(k in ema for k in compared)
    different = [k for k in compared if not torch.equal(backbone[k], ema[k])]
    assert not different, different[:5]
    trainer.train()  # and it fine-tunes from there
    assert trainer.iter == cfg.SOLVER.MAX_ITER and os.path.exists(os.path.join(tmp_path, "det_out", "model_final.pth"))


def test_two_gloo_processes_with_torchrun(tmp_path):
    data = tiny_imagefolder(str(tmp_path / "cls"))
    out = str(tmp_path / "out")
    opts = fast_options(data, out, model_kwargs=SMALL_MODEL, epochs=2, max_steps=2, batch_size=2)
    argv = []
    for key, value in opts.items():
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no-{key}")
        else:
            argv += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(ROOT, "classification", "train.py"), *argv],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [0, 1]
    # Both processes trained (2 steps x 2 images each) and the sharded evaluation covers every
    # validation image exactly once.
    assert records[-1]["train"]["images"] == 8 and records[-1]["num_updates"] == 4
    assert records[-1]["val"]["images"] == records[-1]["val_ema"]["images"] == 2 * len(CLASSES)
    state = read_checkpoint(os.path.join(out, "last.pth"))
    assert not any(k.startswith("module.") for k in state["state_dict"])

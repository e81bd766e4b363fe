"""MODEL.WEIGHTS: released SOFT ImageNet checkpoints map onto every backbone weight; atomic saves."""
from __future__ import annotations

import argparse
import os

import pytest
import torch
from detectron2.modeling import build_model

from detection_helpers import PUBLISHED, load_cfg
from soft_d2.d2 import SoftDetectionCheckpointer
from soft_d2.model import CheckpointMismatchError, create_soft, to_official_state_dict


def random_release_checkpoint(variant: str, path: str, wrap: bool = True) -> dict:
    """A release-format file (timm training checkpoint with EMA weights and argparse args)."""
    torch.manual_seed(1)
    ours = {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in create_soft(variant).state_dict().items()}
    release = to_official_state_dict(ours)
    assert any(k.startswith("block1.0.att.mha.W_q") for k in release)
    noise = {k: v + 1 if v.is_floating_point() else v for k, v in release.items()}
    data = {"state_dict": noise, "state_dict_ema": release, "epoch": 299, "args": argparse.Namespace(model=variant)}
    torch.save(data if wrap else release, path)
    return ours


@pytest.mark.parametrize("config", [PUBLISHED[0], PUBLISHED[4]], ids=["retinanet", "mask_rcnn"])
def test_release_checkpoint_through_model_weights_maps_every_backbone_weight(config, tmp_path, caplog):
    path = str(tmp_path / "soft_norm_tiny_release.pth")
    ours = random_release_checkpoint("soft_norm_tiny", path)
    cfg = load_cfg(config, ["MODEL.WEIGHTS", path])
    model = build_model(cfg)
    with caplog.at_level("INFO"):
        SoftDetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    soft = model.backbone.bottom_up.model
    loaded = soft.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, ours[key]), key  # every backbone tensor, EMA weights preferred
    assert "head.weight" not in loaded
    report = " ".join(r.getMessage() for r in caplog.records)
    assert f"{len(loaded)} of {len(loaded)} backbone tensors" in report and "head" in report


def test_mismatched_variant_is_refused(tmp_path):
    path = str(tmp_path / "soft_norm_small_release.pth")
    random_release_checkpoint("soft_norm_small", path, wrap=False)
    model = build_model(load_cfg(PUBLISHED[0]))
    with pytest.raises(CheckpointMismatchError, match="MODEL.SOFT.VARIANT"):
        SoftDetectionCheckpointer(model).load(path)


def test_detectron2_checkpoint_round_trip_and_atomic_save(tmp_path):
    cfg = load_cfg(PUBLISHED[0])
    model = build_model(cfg)
    checkpointer = SoftDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no temporary files left
    assert open(tmp_path / "last_checkpoint").read() == "model_0000009.pth"
    other = build_model(cfg)
    extra = SoftDetectionCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k

"""Release checkpoints: key conversion, wrappers, strict loading with named mismatches, timm."""
import json

import pytest
import timm
import torch

import soft_d2
from soft_d2.model import (
    CheckpointMismatchError,
    convert_official_state_dict,
    load_checkpoint,
    to_official_state_dict,
)


def _release_layout(reference, name):
    return json.loads((reference / f"official_state_dict_{name}.json").read_text())["entries"]


def _release_state_dict(reference, name):
    """A random state dict with exactly the release's keys, shapes and dtypes."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape, dtype in _release_layout(reference, name):
        dtype = getattr(torch, dtype)
        sd[key] = (torch.randn(shape, generator=gen) if dtype.is_floating_point
                   else torch.randint(0, 100, shape, generator=gen)).to(dtype)
    return sd


@pytest.mark.parametrize("name", ["soft_tiny", "soft_norm_tiny"])
def test_release_layout_loads_strictly(reference, name):
    release = _release_state_dict(reference, name)
    model = timm.create_model(name)
    report = load_checkpoint(model, release)
    assert report.complete and len(report.loaded) == len(release) == len(model.state_dict())
    ours = model.state_dict()
    converted = convert_official_state_dict(release)
    for key, value in converted.items():
        assert torch.equal(ours[key], value), key


def test_names_read_well(reference):
    converted = convert_official_state_dict(_release_state_dict(reference, "soft_tiny"))
    for key in ["stages.0.downsample.conv1.conv.weight", "stages.0.blocks.0.attn.q.weight",
                "stages.0.blocks.0.attn.landmarks.conv.weight", "stages.0.blocks.0.attn.v_conv.weight",
                "stages.2.blocks.2.mlp.fc2.bias", "stages.3.blocks.1.attn.kv.weight", "stages.3.cls_token",
                "stages.3.pos_embed", "norm.weight", "head.weight"]:
        assert key in converted, key
    assert not any(k.startswith(("block", "patch_embed", "pos_embed")) for k in converted)


def test_round_trip_through_release_names():
    model = timm.create_model("soft_norm_tiny")
    ours = model.state_dict()
    release = to_official_state_dict(ours)
    assert "block1.0.att.mha.attn.Qlandmark_op.weight" in release and "patch_embed1.proj.7.running_var" in release
    back = convert_official_state_dict(release)
    assert list(back) == list(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module", "ema"])
def test_wrapped_checkpoints(wrap):
    model = timm.create_model("soft_tiny", num_classes=3)
    release = to_official_state_dict(model.state_dict())
    raw = {k: torch.zeros_like(v) for k, v in release.items()}
    ckpt = {
        "bare": release,
        "state_dict": {"state_dict": release, "epoch": 3},
        "model": {"model": release},
        "module": {"state_dict": {f"module.{k}": v for k, v in release.items()}},
        "ema": {"state_dict": raw, "state_dict_ema": {f"module.{k}": v for k, v in release.items()}},
    }[wrap]
    converted = convert_official_state_dict(ckpt)
    assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())
    if wrap == "ema":  # EMA weights preferred; raw ones on request
        raw_converted = convert_official_state_dict(ckpt, use_ema=False)
        assert all((v == 0).all() for v in raw_converted.values() if v.is_floating_point())


def test_strict_loader_names_every_problem_and_loads_nothing():
    source = timm.create_model("soft_tiny", num_classes=10)
    release = to_official_state_dict(source.state_dict())
    release.pop("block2.1.att.mha.W_v.bias")
    release["block9.0.extra.weight"] = torch.zeros(1)
    target = timm.create_model("soft_tiny", num_classes=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(target, release)
    message = str(err.value)
    assert "stages.1.blocks.1.attn.v.bias" in message  # missing
    assert "block9.0.extra.weight" in message  # unexpected
    assert "head.weight" in message and "(10, 512)" in message and "(5, 512)" in message  # mis-shaped
    assert "nothing was loaded" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())

    report = load_checkpoint(target, release, strict=False)
    assert not report.complete
    assert torch.equal(target.stages[0].blocks[0].attn.q.weight, source.stages[0].blocks[0].attn.q.weight)
    assert "head.weight" in [k for k, _, _ in report.mismatched]


def test_exclude_new_head_from_file(tmp_path):
    source = timm.create_model("soft_norm_tiny")
    path = tmp_path / "release.pth"
    torch.save({"state_dict_ema": to_official_state_dict(source.state_dict()), "epoch": 299}, path)
    target = timm.create_model("soft_norm_tiny", num_classes=0)
    report = load_checkpoint(target, path, exclude=("head.",))
    assert report.complete and report.skipped == ["head.weight", "head.bias"]
    assert torch.equal(target.stages[3].cls_token, source.stages[3].cls_token)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(target, tmp_path / "missing.pth")


def test_timm_pretrained_from_release_file(tmp_path):
    source = timm.create_model("soft_tiny")
    path = tmp_path / "soft_tiny_release.pth"
    torch.save({"state_dict": to_official_state_dict(source.state_dict())}, path)
    model = timm.create_model("soft_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    # a new classifier size: timm drops the head, the rest still loads
    model = timm.create_model("soft_tiny", pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.stages[0].blocks[0].attn.q.weight, source.stages[0].blocks[0].attn.q.weight)
    assert model.head.out_features == 4


def test_in1k_tag_loads_release_file(tmp_path):
    source = timm.create_model("soft_norm_tiny")
    path = tmp_path / "soft_norm_tiny_release.pth"
    torch.save({"state_dict_ema": to_official_state_dict(source.state_dict()), "epoch": 299}, path)
    model = timm.create_model("soft_norm_tiny.in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.pretrained_cfg["tag"] == "in1k" and model.pretrained_cfg["file"] == str(path)
    assert model.state_dict().keys() == source.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_package_exports():
    assert soft_d2.convert_official_state_dict is convert_official_state_dict

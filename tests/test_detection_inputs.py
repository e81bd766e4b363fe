"""What train_net.py, demo.py and the checkpointer do with wrong inputs: checkpoints of other models
or sizes, damaged or code-carrying weight files, a damaged --resume target, unknown variants, broken
images; and that interrupted checkpoint writes leave the previous checkpoint to resume from."""
from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

import train_net
from detection_helpers import QUICKSTART_RETINANET, ROOT, load_cfg, make_small_builtin, quick_train_opts, run_train_net
from soft_d2.d2 import SoftDetectionCheckpointer, find_soft_model
from soft_d2.model import CheckpointFileError, CheckpointMismatchError, UnsafeCheckpointError, to_official_state_dict
from test_checkpoint_files import CreatesMarker


@pytest.fixture()
def small_data(tmp_path, monkeypatch):
    root = str(tmp_path / "datasets")
    make_small_builtin(root, train_images=4, val_images=2)
    monkeypatch.setenv("DETECTRON2_DATASETS", root)
    return root


def quickstart_model(*opts: str):
    return build_model(load_cfg(QUICKSTART_RETINANET, list(opts)))


def backbone_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in find_soft_model(model)[1].state_dict().items()}


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, str]:
    """Checkpoints of other models, each in its usual layout."""
    import timm
    import torchvision

    folder = tmp_path_factory.mktemp("foreign")
    files = {
        "resnet50": torchvision.models.resnet50().state_dict(),  # torchvision: a bare state dict
        "swin": {"model": timm.create_model("swin_tiny_patch4_window7_224").state_dict()},  # Swin's release
        "pvt": timm.create_model("pvt_v2_b0").state_dict(),  # block1.* / patch_embed1.*, like SOFT's release
        # a SOFT-Norm-Small RetinaNet, trained with this config but another size
        "soft_small_detector": {"model": quickstart_model("MODEL.SOFT.VARIANT", "soft_norm_small").state_dict(),
                                "iteration": 99},
        # the released SOFT-Small-Norm ImageNet layout, for a Tiny config
        "soft_small_release": {"state_dict": to_official_state_dict(
            timm.create_model("soft_norm_small", embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8)).state_dict())},
    }
    paths = {}
    for name, data in files.items():
        paths[name] = str(folder / f"{name}.pth")
        torch.save(data, paths[name])
    return paths


# ---------------------------------------------------------------------------- wrong model
@pytest.mark.parametrize("name", ["resnet50", "swin", "pvt", "soft_small_detector", "soft_small_release"])
def test_checkpoint_of_another_model_is_refused_with_the_count(foreign, name):
    model = quickstart_model()
    before = backbone_tensors(model)
    with pytest.raises(CheckpointMismatchError) as err:
        SoftDetectionCheckpointer(model).load(foreign[name])
    message = str(err.value)
    assert foreign[name] in message and "nothing was loaded" in message and "MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS" in message
    assert f"{foreign[name]} does not fit the SOFT backbone (backbone.bottom_up.model): " in message, message
    total = len(before)
    if name.startswith("soft_small"):  # every Tiny tensor is there, and a Small's extra blocks too
        assert f"all {total} backbone tensors are in the file, but so are" in message
    else:
        matched = re.search(r"(\d+) of (\d+) backbone tensors match", message)
        assert matched and int(matched[2]) == total and int(matched[1]) < total, message  # (timm's PVT: 79 of 185)
    if name in ("resnet50", "swin"):
        assert f"0 of {total} backbone tensors match" in message
    assert all(torch.equal(v, before[k]) for k, v in find_soft_model(model)[1].state_dict().items())


def test_train_net_stops_before_training_from_a_resnet_checkpoint(foreign, small_data, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(CheckpointMismatchError, match=r"resnet50.pth does not fit the SOFT backbone .*: 0 of \d+"):
        run_train_net(QUICKSTART_RETINANET, quick_train_opts(out, max_iter=1) + ["MODEL.WEIGHTS", foreign["resnet50"]])
    assert not os.path.exists(os.path.join(out, "model_final.pth"))


def test_partial_weights_load_only_on_request_in_one_line(foreign, caplog):
    cfg = load_cfg(QUICKSTART_RETINANET, ["MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS", "True"])
    model = build_model(cfg)
    with caplog.at_level(logging.INFO):
        SoftDetectionCheckpointer.from_config(cfg, model).load(foreign["resnet50"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    total = len(find_soft_model(model)[1].state_dict())
    assert len(warnings) == 1 and f"0 of {total} backbone tensors (MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS is set: the " \
        f"other {total} keep their initialization)" in warnings[0], warnings


@pytest.mark.parametrize("name", ["soft_small_detector", "soft_small_release"])
def test_partial_weights_line_when_every_backbone_tensor_matched(foreign, name, caplog):
    """A larger SOFT under ALLOW_PARTIAL_WEIGHTS fills the whole backbone: the line counts the entries left
    out, not "the other 0"; in the release layout as in the detector one."""
    cfg = load_cfg(QUICKSTART_RETINANET, ["MODEL.SOFT.ALLOW_PARTIAL_WEIGHTS", "True"])
    model = build_model(cfg)
    with caplog.at_level(logging.INFO):
        SoftDetectionCheckpointer.from_config(cfg, model).load(foreign[name])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    total = len(find_soft_model(model)[1].state_dict())
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    matched = re.search(rf"{total} of {total} backbone tensors \(MODEL\.SOFT\.ALLOW_PARTIAL_WEIGHTS is set: "
                        r"(\d+) backbone entries of the file have no place in this backbone\)", warnings[0])
    assert matched and int(matched[1]) > 0 and "the other" not in warnings[0], warnings[0]


def test_a_folder_as_model_weights_is_named(small_data, tmp_path):
    folder = str(tmp_path / "run")
    SoftDetectionCheckpointer(quickstart_model(), folder).save("model_final")
    with pytest.raises(CheckpointFileError) as err:
        SoftDetectionCheckpointer(quickstart_model()).load(folder)
    assert str(err.value) == (f"checkpoint {folder!r} (MODEL.WEIGHTS) is not a file (a folder?): name the checkpoint "
                              "file itself; checkpoint files in it: model_final.pth")
    opts = quick_train_opts(str(tmp_path / "out"), max_iter=1) + ["MODEL.WEIGHTS", folder]
    with pytest.raises(CheckpointFileError, match=re.escape(f"checkpoint {folder!r} (MODEL.WEIGHTS) is not a file")):
        run_train_net(QUICKSTART_RETINANET, opts)
    assert not os.path.exists(os.path.join(str(tmp_path / "out"), "model_final.pth"))


def test_soft_detector_with_another_head_loads_and_is_reported_in_one_line(tmp_path, caplog):
    source = quickstart_model()
    path = str(tmp_path / "three_classes.pth")
    SoftDetectionCheckpointer(source, str(tmp_path)).save("three_classes")
    target = quickstart_model("MODEL.RETINANET.NUM_CLASSES", "5")
    with caplog.at_level(logging.INFO):
        SoftDetectionCheckpointer(target).load(path)
    loaded = find_soft_model(target)[1].state_dict()
    assert all(torch.equal(v, find_soft_model(source)[1].state_dict()[k]) for k, v in loaded.items())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"{len(loaded)} of {len(loaded)} backbone tensors" in warnings[0]
    assert "2 of another shape" in warnings[0] and "head.cls_score.weight" in warnings[0]


def test_unknown_variant_names_the_key_and_the_closest_variant():
    with pytest.raises(ValueError) as err:
        quickstart_model("MODEL.SOFT.VARIANT", "soft_norm_tinyy")
    message = str(err.value)
    assert message.startswith("MODEL.SOFT.VARIANT 'soft_norm_tinyy' is not a SOFT variant")
    assert message.split("valid variants: ")[1].startswith("soft_norm_tiny,")


# --------------------------------------------------------------------------------- configs
def test_config_files_are_plain_yaml(tmp_path):
    from soft_d2.config import load_config

    marker = str(tmp_path / "MARKER")
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'_BASE_: "{QUICKSTART_RETINANET}"\nOUTPUT_DIR: !!python/object/apply:builtins.open ["{marker}", "w"]\n')
    with pytest.raises(ValueError, match=f"config file {evil} .*uses a YAML tag that would construct Python objects"):
        load_config(str(evil), [])
    assert not os.path.exists(marker)
    weights = tmp_path / "weights.pth"
    torch.save({"a": torch.ones(2)}, weights)
    not_yaml = tmp_path / "notes.yaml"
    not_yaml.write_text("just a sentence\n")
    for path in (weights, not_yaml):
        with pytest.raises(ValueError, match=f"config file {path} is not a Detectron2 YAML config"):
            load_config(str(path), [])
    with pytest.raises(FileNotFoundError, match="config file 'missing.yaml' does not exist"):
        load_config("missing.yaml", [])


@pytest.mark.parametrize("key, value", [("MODEL.SOFT.NEWTON_MAX_ITER", "0"), ("MODEL.SOFT.DROP_PATH_RATE", "1.5")])
def test_out_of_range_model_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"{re.escape(key)} must be"):
        quickstart_model(key, value)


# ---------------------------------------------------------------------- damaged / unsafe files
def truncated_copy(path: str, out: str) -> str:
    data = open(path, "rb").read()
    with open(out, "wb") as f:
        f.write(data[: len(data) // 2])
    return out


def test_damaged_weights_are_named_in_train_net(small_data, tmp_path):
    saved = str(tmp_path / "good.pth")
    SoftDetectionCheckpointer(quickstart_model(), str(tmp_path)).save("good")
    bad = truncated_copy(saved, str(tmp_path / "bad.pth"))
    opts = quick_train_opts(str(tmp_path / "run"), max_iter=1) + ["MODEL.WEIGHTS", bad]
    for flags in ((), ("--eval-only",)):
        with pytest.raises(CheckpointFileError, match=re.escape(bad) + " could not be read: .* truncated"):
            run_train_net(QUICKSTART_RETINANET, opts, *flags)


def test_eval_only_without_weights_is_refused(small_data, tmp_path):
    with pytest.raises(ValueError, match="--eval-only needs weights to evaluate: pass MODEL.WEIGHTS"):
        run_train_net(QUICKSTART_RETINANET, quick_train_opts(str(tmp_path / "run")), "--eval-only")


def test_resume_from_a_damaged_or_missing_last_checkpoint_target(small_data, tmp_path):
    out = str(tmp_path / "run")
    checkpointer = SoftDetectionCheckpointer(quickstart_model(), out)
    checkpointer.save("model_0000001", iteration=1)
    checkpointer.save("model_0000003", iteration=3)
    truncated_copy(os.path.join(out, "model_0000003.pth"), os.path.join(out, "model_0000003.pth"))
    with pytest.raises(CheckpointFileError) as err:
        run_train_net(QUICKSTART_RETINANET, quick_train_opts(out, max_iter=5), "--resume")
    message = str(err.value)
    assert "model_0000003.pth could not be read" in message and "truncated" in message
    assert "last_checkpoint" in message and "earlier checkpoints" in message and "model_0000001.pth" in message
    os.remove(os.path.join(out, "model_0000003.pth"))
    with pytest.raises(FileNotFoundError, match="names 'model_0000003.pth', which is not a file"):
        SoftDetectionCheckpointer(quickstart_model(), out).resume_or_load("", resume=True)


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_weights_that_would_run_code_are_refused(tmp_path, suffix):
    marker = str(tmp_path / "MARKER")
    path = str(tmp_path / f"evil{suffix}")
    data = {"model": {}, "__author__": "someone", "extra": CreatesMarker(marker)}
    if suffix == ".pth":
        torch.save(data, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(data, f)
    cfg = load_cfg(QUICKSTART_RETINANET)
    with pytest.raises(UnsafeCheckpointError) as err:
        SoftDetectionCheckpointer.from_config(cfg, build_model(cfg)).load(path)
    assert path in str(err.value) and "io.open" in str(err.value) and "MODEL.SOFT.UNSAFE_UNPICKLE True" in str(err.value)
    assert not os.path.exists(marker)
    # The documented opt-in reads the file in full (and so runs its code); its empty model still does not fit.
    cfg = load_cfg(QUICKSTART_RETINANET, ["MODEL.SOFT.UNSAFE_UNPICKLE", "True"])
    with pytest.raises(CheckpointMismatchError, match="0 of"):
        SoftDetectionCheckpointer.from_config(cfg, build_model(cfg)).load(path)
    assert os.path.exists(marker)


# --------------------------------------------------------------------------------- demo.py
def test_demo_skips_and_names_broken_images_and_fails_at_the_end(small_data, tmp_path, capsys):
    import demo

    weights = str(tmp_path / "weights.pth")
    SoftDetectionCheckpointer(quickstart_model(), str(tmp_path)).save("weights")
    val = os.path.join(small_data, "soft_shapes_v1", "val")
    good = sorted(os.path.join(val, f) for f in os.listdir(val) if f.endswith(".jpg"))[:2]
    truncated = truncated_copy(good[0], str(tmp_path / "truncated.jpg"))
    not_an_image = str(tmp_path / "notes.jpg")
    with open(not_an_image, "w") as f:
        f.write("not an image")
    argv = ["--config-file", QUICKSTART_RETINANET, "--input", good[0], truncated, not_an_image, good[1],
            "--output", str(tmp_path / "out"), "--opts", "MODEL.WEIGHTS", weights,
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    with pytest.raises(SystemExit) as exit_:
        demo.main(argv)
    assert exit_.value.code not in (0, None)
    assert f"2 of 4 images could not be read" in str(exit_.value.code)
    stderr = capsys.readouterr().err
    for path in (truncated, not_an_image):
        assert f"{path}: skipped, the image could not be read" in stderr and path in str(exit_.value.code)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in good)
    with pytest.raises(ValueError, match="demo.py needs trained weights"):
        demo.main(argv[:-6] + ["INPUT.MIN_SIZE_TEST", "96"])


# ----------------------------------------------------------------------- interrupted writes
def test_failed_checkpoint_writes_keep_the_previous_checkpoint(tmp_path, monkeypatch):
    out = str(tmp_path)
    model = quickstart_model()
    SoftDetectionCheckpointer(model, out).save("model_0000001", iteration=1)
    real_save, real_replace = torch.save, os.replace

    def disk_full(obj, f, *args, **kwargs):  # some bytes reach the file, then the disk is full
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        SoftDetectionCheckpointer(model, out).save("model_0000003", iteration=3)
    assert sorted(os.listdir(out)) == ["last_checkpoint", "model_0000001.pth"]  # no partial file either

    def pointer_fails(src, dst):  # the checkpoint is written, its pointer update fails
        if dst.endswith("last_checkpoint"):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(os, "replace", pointer_fails)
    with pytest.raises(OSError, match="Input/output"):
        SoftDetectionCheckpointer(model, out).save("model_0000003", iteration=3)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(os.listdir(out)) == ["last_checkpoint", "model_0000001.pth", "model_0000003.pth"]
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000001.pth"
    assert SoftDetectionCheckpointer(quickstart_model(), out).resume_or_load("", resume=True)["iteration"] == 1


def test_killed_between_write_and_rename_resumes_from_the_previous_checkpoint(small_data, tmp_path):
    out = str(tmp_path / "run")
    opts = quick_train_opts(out, max_iter=3) + ["SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
                                                "TEST.VIS_IMAGES", "0"]
    # The process dies (SIGKILL) once model_final.pth is written under its temporary name.
    code = ("import os, runpy, signal, sys\n"
            "real = os.replace\n"
            "def replace(src, dst):\n"
            "    if dst.endswith('model_final.pth'):\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(src, dst)\n"
            "os.replace = replace\n"
            f"sys.argv = ['train_net.py', '--config-file', {QUICKSTART_RETINANET!r}, *{opts!r}]\n"
            f"runpy.run_path({os.path.join(ROOT, 'train_net.py')!r}, run_name='__main__')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    left = sorted(os.listdir(out))
    assert "model_final.pth" not in left and any(f.startswith(".tmp_model_final.pth") for f in left), left
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000001.pth"
    cfg = load_cfg(QUICKSTART_RETINANET, opts)
    cfg.freeze()
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=True)  # --resume
    assert trainer.start_iter == 2
    trainer.train()
    assert os.path.exists(os.path.join(out, "model_final.pth"))
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"

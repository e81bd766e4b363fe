"""classification/train.py: configs, one step per variant family, exact resume, EMA, evaluation of
our and released checkpoints, corrupt images, atomic checkpoints."""
from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import shutil

import pytest
import torch

from classification import checkpoint as ckpt
from classification.config import ConfigError, OPTIONS, parse_args, resolve
from classification.train import build_model, build_optimizer, main
from classification_helpers import CONFIGS, QUICKSTART, ROOT, SMALL_MODEL, config, tiny_imagefolder
from ops_reference import count_compiled_calls
from soft_d2.model import CheckpointMismatchError, to_official_state_dict
from soft_d2.model.checkpoint import read_checkpoint
from soft_d2.data.shapes_classification import CLASSES
from soft_d2.ops import compiled_available

# The release's config/SOFT_*.yaml values: size -> (lr, batch) for plain/cuda and for norm.
RELEASE = {"Tiny": ((1e-3, 128), (1e-3, 128)), "Small": ((1e-3, 128), (1e-3, 128)),
           "Medium": ((3.5e-4, 32), (4e-4, 32)), "Large": ((3.3e-4, 32), (3.3e-4, 32)),
           "Huge": ((2.7e-4, 32), (2.7e-4, 32))}


TRAIN_IMAGES, VAL_IMAGES = 4 * len(CLASSES), 2 * len(CLASSES)  # tiny_imagefolder's defaults


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_imagefolder(str(tmp_path_factory.mktemp("cls_data")))


# ------------------------------------------------------------------------------------ configs
def test_the_15_release_configs_parse_with_their_values():
    files = sorted(glob.glob(os.path.join(CONFIGS, "SOFT_*.yaml")))
    assert len(files) == 15
    for size, ((lr, batch), (norm_lr, norm_batch)) in RELEASE.items():
        for kind in ("", "_cuda", "_norm"):
            cfg = resolve(os.path.join(CONFIGS, f"SOFT_{size}{kind}.yaml"))
            model = f"soft_{'norm_' if kind == '_norm' else ''}{size.lower()}"
            assert cfg.model == model
            assert cfg.kernel_method == ("cuda" if kind == "_cuda" else "torch")
            if kind == "_cuda" and size == "Large":
                assert cfg.lr == 3.5e-4  # the release's Large cuda config differs from its torch one
            else:
                assert (cfg.lr, cfg.batch_size) == ((norm_lr, norm_batch) if kind == "_norm" else (lr, batch))
            assert (cfg.min_lr, cfg.warmup_epochs, cfg.epochs, cfg.clip_grad, cfg.newton_maxiter) == (5e-5, 10, 300, 1.0, 20)
    quick = resolve(QUICKSTART)
    assert quick.model == "soft_norm_tiny" and quick.data == "builtin:shapes"


def test_config_spellings_precedence_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('model: "soft_tiny"\nmin-lr: 2e-5\nbatch-size: 16\n')  # the release's older spelling
    cfg = parse_args(["--config", str(path), "--batch_size", "8", "--no-model_ema", "--scale", "0.5", "1"])
    assert (cfg.min_lr, cfg.batch_size, cfg.model_ema, cfg.scale) == (2e-5, 8, False, [0.5, 1.0])
    assert cfg.lr == OPTIONS["lr"][0]
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown option 'learning_rate'.*Valid options: .*\blr\b"):
        resolve(str(path))
    with pytest.raises(ConfigError, match=r"model 'soft_tinny' is not a SOFT variant \(did you mean 'soft_tiny'\?\)"):
        resolve(None, {"model": "soft_tinny"})
    with pytest.raises(ConfigError, match="kernel_method"):
        resolve(None, {"kernel_method": "gpu"})
    with pytest.raises(ConfigError, match="--eval needs --eval_checkpoint"):
        resolve(None, {"eval": True})


def test_missing_split_folder_is_named(tmp_path):
    os.makedirs(tmp_path / "train" / "a")
    with pytest.raises(FileNotFoundError, match=r"has no val/ folder"):
        main(config(str(tmp_path), str(tmp_path / "out")))


def test_native_builtin_set_shows_the_same_scene_at_every_size(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from classification.data import resolve_data_root
    from soft_d2.data import shapes_classification as cls

    def pixels(image, size=48):
        return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float64)

    for index in range(3):
        small, label = cls.generate_image("val", index, 96, native=True)
        large, label_large = cls.generate_image("val", index, 384, native=True)
        other, _ = cls.generate_image("val", index + cls.SPLITS["val"][0], 384, native=True)
        assert label == label_large and small.size == (96, 96) and large.size == (384, 384)
        same, different = np.abs(pixels(small) - pixels(large)).mean(), np.abs(pixels(small) - pixels(other)).mean()
        assert same < 0.1 * different, (same, different)  # the same scene up to pixel noise (measured: 3 vs 75)
    # the 64 px set is drawn as before (its background at its own size, then shrunk)
    assert not np.array_equal(np.asarray(cls.generate_image("val", 0)[0]),
                              np.asarray(cls.generate_image("val", 0, 64, native=True)[0]))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(ValueError, match="builtin:shapes:<size>"):
        resolve_data_root("builtin:shapes:big")
    folder = cls.ensure_dataset(str(tmp_path), per_class={"val": 1}, native_size=80, splits=("val",))
    assert folder.endswith("soft_shapes_cls_v1_native80") and not os.path.exists(os.path.join(folder, "train"))
    assert Image.open(glob.glob(os.path.join(folder, "val", "*", "*.jpg"))[0]).size == (80, 80)


def test_no_weight_decay_on_norms_biases_position_embeddings_and_class_token():
    cfg = resolve(os.path.join(CONFIGS, "SOFT_Tiny_norm.yaml"))
    model = build_model(cfg, 10)
    optimizer = build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert type(optimizer).__name__ == "AdamW" and len(no_decay) + len(decay) == len(names)
    assert {f"stages.{i}.pos_embed" for i in range(4)} | {"stages.3.cls_token", "norm.weight", "head.bias"} <= no_decay
    assert all(n.endswith("weight") and "norm" not in n for n in decay) and "head.weight" in decay


# ------------------------------------------------------------------------- training and EMA
FAMILIES = [("soft_tiny", "torch"), ("soft_norm_tiny", "torch"), ("soft_tiny", "cuda")]


@pytest.mark.parametrize("model,kernel", FAMILIES, ids=["plain", "norm", "compiled"])
def test_one_training_step_per_variant_family(model, kernel, data, tmp_path, monkeypatch):
    if kernel == "cuda" and not compiled_available():
        pytest.skip("compiled op not built")
    cfg = config(data, str(tmp_path), model=model, kernel_method=kernel, max_steps=1)
    before = build_model(cfg, len(CLASSES)).state_dict()
    if kernel == "cuda":  # 32 px is below STREAM_ELEMENTS: send it to the compiled engine anyway
        monkeypatch.setattr("soft_d2.ops.streamed_torch.STREAM_ELEMENTS", 0)
    with count_compiled_calls() if compiled_available() else contextlib.nullcontext() as counts:
        result = main(cfg)
    if kernel == "cuda":  # "cuda" is the release's name for our compiled op: it ran, forward and backward
        assert counts["kernel_matmul_forward"] > 0 and counts["kernel_t_matmul_backward"] > 0, counts
    elif counts is not None:
        assert not counts, counts
    state = read_checkpoint(os.path.join(tmp_path, "last.pth"))
    changed = [k for k, v in state["state_dict"].items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * len(before) - 10  # (BN running stats and every weight)
    assert state["epoch"] == 1 and state["num_updates"] == 1 and state["arch"] == model
    assert state["config"]["kernel_method"] == kernel
    assert result["final"]["val"]["images"] == VAL_IMAGES and os.path.exists(os.path.join(tmp_path, "best.pth"))


def test_resume_continues_exactly(data, tmp_path, monkeypatch):
    """2 epochs straight == 1 epoch, stop, --resume 1 epoch: same weights, EMA, optimizer and LR."""
    copies = {}
    real_save = ckpt.save

    def save_and_keep(state, output, is_best):
        path = real_save(state, output, is_best)
        copies[state["epoch"]] = shutil.copy(path, os.path.join(output, f"epoch{state['epoch']}.pth"))
        return path

    monkeypatch.setattr(ckpt, "save", save_and_keep)
    opts = dict(model_kwargs=SMALL_MODEL, epochs=2, warmup_epochs=1, max_steps=3, drop_path=0.1)
    straight = main(config(data, str(tmp_path / "a"), **opts))
    resumed = main(config(data, str(tmp_path / "b"), resume=copies[1], **opts))
    assert [h["epoch"] for h in resumed["history"]] == [1]
    a, b = read_checkpoint(copies[2]), read_checkpoint(os.path.join(tmp_path, "b", "last.pth"))
    for key in ("state_dict", "state_dict_ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert a["num_updates"] == b["num_updates"] == 6 and b["epoch"] == 2
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    assert straight["history"][1]["train"] == pytest.approx({**resumed["history"][0]["train"],
                                                             "seconds": straight["history"][1]["train"]["seconds"],
                                                             "images_per_s": straight["history"][1]["train"]["images_per_s"]})
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])


def test_ema_is_tracked_saved_and_evaluated(data, tmp_path):
    result = main(config(data, str(tmp_path / "run"), model_kwargs=SMALL_MODEL, max_steps=4))
    last = os.path.join(tmp_path, "run", "last.pth")
    state = read_checkpoint(last)
    assert any(not torch.equal(v, state["state_dict_ema"][k]) for k, v in state["state_dict"].items()
               if v.is_floating_point())
    final = result["final"]
    assert final["val_ema"]["images"] == final["val"]["images"] == VAL_IMAGES
    assert result["best_top1"] == final["val_ema"]["top1"]  # the EMA decides "best", as in the release
    # --eval of the file reproduces the numbers of both weight sets (EMA preferred, raw on request).
    ema_eval = main(config(data, str(tmp_path / "e1"), model_kwargs=SMALL_MODEL, eval=True, eval_checkpoint=last))
    raw_eval = main(config(data, str(tmp_path / "e2"), model_kwargs=SMALL_MODEL, eval=True, eval_checkpoint=last,
                           eval_raw_weights=True))
    for got, want in ((ema_eval, final["val_ema"]), (raw_eval, final["val"])):
        assert got["top1"] == pytest.approx(want["top1"]) and got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_eval_of_a_released_format_checkpoint(data, tmp_path):
    cfg = config(data, str(tmp_path / "e"), model="soft_norm_tiny", eval=True,
                 eval_checkpoint=str(tmp_path / "release.pth"))
    torch.manual_seed(3)
    model = build_model(cfg, len(CLASSES))
    weights = to_official_state_dict(model.state_dict())
    torch.save({"state_dict": weights, "state_dict_ema": weights, "epoch": 299,
                "args": argparse.Namespace(model="soft_norm_tiny")}, tmp_path / "release.pth")
    got = main(cfg)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ours.pth")
    ours = main(config(data, str(tmp_path / "o"), model="soft_norm_tiny", eval=True,
                       eval_checkpoint=str(tmp_path / "ours.pth")))
    assert got["images"] == VAL_IMAGES and got["top1"] == ours["top1"] and got["loss"] == pytest.approx(ours["loss"])
    with pytest.raises(CheckpointMismatchError, match="does not fit"):
        main(config(data, str(tmp_path / "x"), model="soft_tiny", model_kwargs=SMALL_MODEL, eval=True,
                    eval_checkpoint=str(tmp_path / "release.pth")))


# ------------------------------------------------------------------------------- robustness
def test_corrupt_images_are_skipped_named_and_counted(tmp_path, caplog):
    data = tiny_imagefolder(str(tmp_path / "d"))
    broken = sorted(glob.glob(os.path.join(data, "train", "circle", "*.jpg")))[:2]
    with open(broken[0], "wb") as f:
        f.write(b"not an image")
    with open(broken[1], "r+b") as f:  # truncated JPEG
        f.truncate(200)
    logging.getLogger("classification").addHandler(caplog.handler)  # it does not propagate to the root
    result = main(config(data, str(tmp_path / "out"), model_kwargs=SMALL_MODEL, max_steps=None, batch_size=4,
                         mixup=0.0, cutmix=0.0))  # 28 images: 7 full batches read every one
    assert result["skipped_images"] == 2 and result["final"]["train"]["skipped_images"] == 2
    assert result["final"]["train"]["images"] == TRAIN_IMAGES  # batches kept their size
    logging.getLogger("classification").removeHandler(caplog.handler)
    messages = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path in broken:
        assert f"skipped unreadable image {path}" in messages


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    ckpt.atomic_save({"a": torch.ones(2)}, str(tmp_path / "last.pth"))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"a": torch.zeros(2)}, str(tmp_path / "last.pth"))
    assert torch.equal(torch.load(tmp_path / "last.pth")["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["last.pth"]


def test_trainer_script_needs_the_installed_package(monkeypatch):
    """Run as a script, train.py finds `classification` only where the project is installed; where
    it is not, it says how to install before importing anything heavy."""
    import runpy
    import sys

    monkeypatch.setitem(sys.modules, "classification", None)  # not importable
    monkeypatch.setattr(sys, "argv", ["classification/train.py", "--help"])
    with pytest.raises(SystemExit, match=r"pip install --no-build-isolation -e \."):
        runpy.run_path(os.path.join(ROOT, "classification", "train.py"), run_name="__main__")


def test_trainer_runs_as_a_module_and_under_dist_train():
    import subprocess
    import sys

    env = {**os.environ, "PYTHON": sys.executable}  # dist_train.sh's interpreter: this one, not .venv's
    for command in ([sys.executable, "-m", "classification.train", "--help"],
                    ["bash", os.path.join("classification", "dist_train.sh"), "1", "--help"]):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
        assert "--eval_checkpoint" in done.stdout, (command, done.stdout[-2000:])


def test_dist_train_uses_the_repository_venv_or_python(tmp_path):
    """dist_train.sh starts torch.distributed.run with the .venv beside its folder (not PATH's
    torchrun), $PYTHON overriding it, and stops with a message where neither exists."""
    import stat
    import subprocess

    (tmp_path / "classification").mkdir()
    script = tmp_path / "classification" / "dist_train.sh"
    shutil.copy(os.path.join(ROOT, "classification", "dist_train.sh"), script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    missing = subprocess.run(["bash", str(script), "2", "--epochs", "1"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and ".venv" in missing.stderr, missing.stderr
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "$0 $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    done = subprocess.run(["bash", str(script), "2", "--epochs", "1"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(fake), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                   "-m", "classification.train", "--epochs", "1"]
    other = subprocess.run(["bash", str(script), "1"], env={**env, "PYTHON": str(fake) + "-missing"},
                           capture_output=True, text=True)
    assert other.returncode == 2 and "-missing" in other.stderr


def test_trainer_imports_only_the_model_and_runs_without_detectron2(data, tmp_path):
    """classification/train.py imports the model, not the Detectron2 layer (even where Detectron2 is
    installed), and trains where Detectron2 is absent."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    loaded = ("print('D2', sorted(m for m, mod in sys.modules.items() if mod is not None and "
              "(m.split('.')[0] == 'detectron2' or m.startswith(('soft_d2.d2', 'soft_d2.detection', 'soft_d2.segmentation', 'soft_d2.config')))))")
    args = ["--data", data, "--output", str(tmp_path), "--img_size", "32", "--batch_size", "4", "--workers", "0",
            "--epochs", "1", "--warmup_epochs", "0", "--cooldown_epochs", "0", "--max_steps", "1",
            "--no-tensorboard", "--model_kwargs", SMALL_MODEL]
    runs = {
        "installed": "import sys; import classification.train; " + loaded,
        "absent": ("import sys, runpy; sys.modules['detectron2'] = None; "  # any `import detectron2` now fails
                   f"sys.argv = ['classification/train.py', *{args!r}]; "
                   "runpy.run_path('classification/train.py', run_name='__main__'); " + loaded),
    }
    for name, code in runs.items():
        done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (name, done.stderr[-3000:])
        assert done.stdout.strip().splitlines()[-1] == "D2 []", (name, done.stdout[-2000:])
    assert read_checkpoint(os.path.join(tmp_path, "last.pth"))["epoch"] == 1

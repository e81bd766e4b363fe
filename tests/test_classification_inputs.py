"""classification/train.py with wrong inputs: damaged or code-carrying checkpoints for --eval and
--resume, a checkpoint of another model, an unknown --model; and interrupted writes of last.pth and
best.pth, after which --resume continues from the previous checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from classification import checkpoint as ckpt
from classification.config import ConfigError, resolve
from classification.train import main
from classification_helpers import ROOT, SMALL_MODEL, config, fast_options, tiny_imagefolder
from soft_d2.model import CheckpointFileError, CheckpointMismatchError, UnsafeCheckpointError
from soft_d2.model.checkpoint import read_checkpoint
from test_checkpoint_files import CreatesMarker


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A data set and a 1-epoch run of the small model (its last.pth and best.pth)."""
    root = tmp_path_factory.mktemp("cls_inputs")
    data = tiny_imagefolder(str(root / "data"))
    out = str(root / "run")
    main(config(data, out, model_kwargs=SMALL_MODEL, max_steps=1))
    return data, out


def truncated_copy(path: str, out: str) -> str:
    data = open(path, "rb").read()
    with open(out, "wb") as f:
        f.write(data[: len(data) // 2])
    return out


def test_damaged_checkpoints_are_named_for_eval_and_resume(trained, tmp_path):
    data, out = trained
    bad = truncated_copy(os.path.join(out, "last.pth"), str(tmp_path / "last.pth"))
    for opts in (dict(eval=True, eval_checkpoint=bad), dict(resume=bad)):
        with pytest.raises(CheckpointFileError, match=f"{bad} could not be read: .*truncated"):
            main(config(data, str(tmp_path / "o"), model_kwargs=SMALL_MODEL, **opts))


def test_code_carrying_checkpoints_are_refused_for_eval_and_resume(trained, tmp_path):
    data, out = trained
    marker = str(tmp_path / "MARKER")
    evil = str(tmp_path / "evil.pth")
    torch.save({**read_checkpoint(os.path.join(out, "last.pth")), "extra": CreatesMarker(marker)}, evil)
    for opts in (dict(eval=True, eval_checkpoint=evil), dict(resume=evil)):
        with pytest.raises(UnsafeCheckpointError) as err:
            main(config(data, str(tmp_path / "o"), model_kwargs=SMALL_MODEL, **opts))
        assert evil in str(err.value) and "io.open" in str(err.value) and "--unsafe_unpickle" in str(err.value)
        assert not os.path.exists(marker)
    # --unsafe_unpickle (documented as unsafe) reads it in full: the file's code runs.
    main(config(data, str(tmp_path / "o"), model_kwargs=SMALL_MODEL, eval=True, eval_checkpoint=evil,
                unsafe_unpickle=True))
    assert os.path.exists(marker)


def test_resume_from_another_model_names_the_file_before_restoring(trained, tmp_path):
    data, out = trained
    last = os.path.join(out, "last.pth")
    with pytest.raises(CheckpointMismatchError, match=f"--resume '{last}' was written for another model"):
        main(config(data, str(tmp_path / "o"), model="soft_norm_tiny", resume=last))


def test_unknown_model_lists_the_variants_closest_first():
    with pytest.raises(ConfigError) as err:
        resolve(None, {"model": "soft_norm_tinyy"})
    assert str(err.value).startswith("model 'soft_norm_tinyy' is not a SOFT variant")
    assert str(err.value).split("valid variants: ")[1].startswith("soft_norm_tiny,")


def test_command_line_values_that_would_fail_later_name_the_option(trained, tmp_path):
    data, _ = trained
    for overrides, says in ((dict(model_kwargs="[16, 32]"), "option 'model_kwargs'.*JSON object"),
                            (dict(drop_path=1.5), "drop_path must be a rate in"),
                            (dict(model_kwargs='{"embed_dim": 16}'), "model_kwargs .*'embed_dim'"),
                            (dict(model_kwargs=SMALL_MODEL, num_classes=3), "num_classes 3 is smaller than the 7 class folders")):
        with pytest.raises(ConfigError, match=says):
            main(config(data, str(tmp_path / "o"), **overrides))


def test_failed_best_checkpoint_write_keeps_the_previous_files(tmp_path, monkeypatch):
    out = str(tmp_path)
    ckpt.save({"epoch": 1, "w": torch.ones(3)}, out, is_best=True)
    real_replace = os.replace

    def fail_best(src, dst):
        if dst.endswith(ckpt.BEST):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_best)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save({"epoch": 2, "w": torch.zeros(3)}, out, is_best=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(os.listdir(out)) == [ckpt.BEST, ckpt.LAST]  # no temporary file left behind
    assert read_checkpoint(os.path.join(out, ckpt.BEST))["epoch"] == 1
    assert read_checkpoint(os.path.join(out, ckpt.LAST))["epoch"] == 2


def test_killed_between_write_and_rename_resumes_from_the_previous_checkpoint(tmp_path):
    data = tiny_imagefolder(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    opts = fast_options(data, out, model_kwargs=SMALL_MODEL, epochs=2, max_steps=1)
    argv = [f"--{k}" if v is True else f"--no-{k}" if v is False else f"--{k}={v}" for k, v in opts.items()]
    # Dies (SIGKILL) once epoch 2's last.pth is written under its temporary name.
    code = ("import os, runpy, signal, sys\n"
            "real, seen = os.replace, []\n"
            "def replace(src, dst):\n"
            "    if dst.endswith('last.pth'):\n"
            "        seen.append(dst)\n"
            "        if len(seen) == 2:\n"
            "            os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(src, dst)\n"
            "os.replace = replace\n"
            f"sys.argv = ['classification/train.py', *{argv!r}]\n"
            "runpy.run_module('classification.train', run_name='__main__')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert read_checkpoint(os.path.join(out, ckpt.LAST))["epoch"] == 1
    assert read_checkpoint(os.path.join(out, ckpt.BEST))["epoch"] == 1
    resumed = main(config(data, out, model_kwargs=SMALL_MODEL, epochs=2, max_steps=1,
                          resume=os.path.join(out, ckpt.LAST)))
    assert [h["epoch"] for h in resumed["history"]] == [1]
    assert read_checkpoint(os.path.join(out, ckpt.LAST))["epoch"] == 2

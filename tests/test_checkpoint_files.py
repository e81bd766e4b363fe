"""Checkpoint files that are not what they claim: corrupt, truncated, foreign or carrying code, and
unknown variant names; every one is refused with a message naming the file (or name) and the fix."""
from __future__ import annotations

import argparse
import os
import pickle

import pytest
import timm
import torch

import soft_d2
from helpers import small_model
from soft_d2.model import CheckpointFileError, UnsafeCheckpointError, create_soft, to_official_state_dict
from soft_d2.model.checkpoint import read_checkpoint
from soft_d2.model.checkpoint_file import read_pickle_file


class CreatesMarker:
    """Unpickling this creates the file ``path``: stands for any code a checkpoint could run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def damaged_files(folder, good: str) -> dict[str, tuple[str, str]]:
    """name -> (path, what the message must say), for a good torch.save file ``good``."""
    data = open(good, "rb").read()
    files = {
        "empty": (b"", "empty"),
        "text": (b"this is not a checkpoint\n" * 20, "not a checkpoint"),
        "truncated": (data[: len(data) // 2], "truncated"),
        "html": (b"<!DOCTYPE html><html>404 Not Found</html>", "not a checkpoint"),
    }
    legacy = os.path.join(folder, "legacy.pth")
    torch.save({"a": torch.ones(100)}, legacy, _use_new_zipfile_serialization=False)
    files["legacy_truncated"] = (open(legacy, "rb").read()[:120], "truncated or damaged")
    out = {}
    for name, (content, says) in files.items():
        path = os.path.join(folder, f"{name}.pth")
        with open(path, "wb") as f:
            f.write(content)
        out[name] = (path, says)
    return out


def test_damaged_files_are_named_by_load_checkpoint(tmp_path):
    model = small_model()
    good = str(tmp_path / "good.pth")
    torch.save(model.state_dict(), good)
    for name, (path, says) in damaged_files(str(tmp_path), good).items():
        with pytest.raises(CheckpointFileError) as err:
            soft_d2.load_checkpoint(model, path)
        assert path in str(err.value) and says in str(err.value), (name, str(err.value))
    with pytest.raises(CheckpointFileError, match="not a file"):
        soft_d2.load_checkpoint(model, tmp_path)
    assert soft_d2.load_checkpoint(model, good).complete


def test_release_checkpoint_reads_with_weights_only(tmp_path, monkeypatch):
    """The released format (argparse.Namespace under 'args') needs no full unpickling."""
    path = str(tmp_path / "release.pth")
    weights = to_official_state_dict(timm.create_model("soft_tiny").state_dict())
    torch.save({"state_dict": weights, "epoch": 299, "args": argparse.Namespace(model="soft_tiny", lr=1e-3)}, path)
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    state = read_checkpoint(path)
    assert state["args"].model == "soft_tiny" and calls == [True]
    assert soft_d2.load_checkpoint(timm.create_model("soft_tiny"), path).complete
    assert calls == [True, True]


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, fmt):
    marker = str(tmp_path / "MARKER")
    path = str(tmp_path / "evil.pth")
    torch.save({"state_dict": small_model().state_dict(), "extra": CreatesMarker(marker)}, path,
               _use_new_zipfile_serialization=fmt == "zip")
    for load in (lambda: read_checkpoint(path), lambda: soft_d2.load_checkpoint(small_model(), path)):
        with pytest.raises(UnsafeCheckpointError) as err:
            load()
        message = str(err.value)
        assert path in message and "io.open" in message and "unsafe_unpickle=True" in message, message
        assert not os.path.exists(marker)
    # The documented opt-in reads it in full: the code runs (which is why it is opt-in).
    read_checkpoint(path, unsafe_unpickle=True)
    assert os.path.exists(marker)


def test_detectron2_pickles_allow_numpy_arrays_only(tmp_path):
    import numpy as np

    good = str(tmp_path / "model_zoo.pkl")
    with open(good, "wb") as f:
        pickle.dump({"model": {"w": np.ones((2, 3), np.float32), "n": np.int64(3)}, "__author__": "zoo"}, f, protocol=2)
    assert read_pickle_file(good)["model"]["w"].shape == (2, 3)
    marker = str(tmp_path / "MARKER")
    evil = str(tmp_path / "evil.pkl")
    with open(evil, "wb") as f:
        pickle.dump({"model": {}, "__author__": "x", "extra": CreatesMarker(marker)}, f)
    with pytest.raises(UnsafeCheckpointError, match="io.open"):
        read_pickle_file(evil)
    assert not os.path.exists(marker)
    truncated = str(tmp_path / "truncated.pkl")
    with open(truncated, "wb") as f:
        f.write(open(good, "rb").read()[:40])
    with pytest.raises(CheckpointFileError, match="truncated.pkl could not be read.*truncated or damaged"):
        read_pickle_file(truncated)


def pickle_file(path: str, obj, protocol: int = 4) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_plain_pickles_are_read_by_load_checkpoint_like_detectron2_pickles(tmp_path, suffix):
    """pickle.dump files (a .pkl, or another name) are read by the unpickler of Detectron2's .pkl files:
    tensors, numpy arrays (returned as tensors) and SAFE_GLOBALS load; other types are refused by name."""
    import numpy as np

    model = small_model()
    state = model.state_dict()
    tensors = pickle_file(str(tmp_path / f"tensors{suffix}"),
                          {"state_dict": state, "args": argparse.Namespace(model="small")})
    assert soft_d2.load_checkpoint(small_model(), tensors).complete
    zoo = pickle_file(str(tmp_path / f"zoo{suffix}"), {"model": {k: v.numpy() for k, v in state.items()},
                                                       "__author__": "zoo"}, protocol=2)
    read = read_checkpoint(zoo)["model"]
    assert all(isinstance(v, torch.Tensor) and torch.equal(v, state[k]) for k, v in read.items())
    assert soft_d2.load_checkpoint(small_model(), zoo).complete
    marker = str(tmp_path / "MARKER")
    evil = pickle_file(str(tmp_path / f"evil{suffix}"), {"state_dict": state, "extra": CreatesMarker(marker)})
    with pytest.raises(UnsafeCheckpointError) as err:
        soft_d2.load_checkpoint(small_model(), evil)
    message = str(err.value)
    assert evil in message and "io.open" in message and "unsafe_unpickle=True" in message, message
    assert not os.path.exists(marker)
    with pytest.raises(UnsafeCheckpointError, match=r"numpy\.random"):  # numpy objects other than arrays
        soft_d2.load_checkpoint(small_model(), pickle_file(str(tmp_path / f"rng{suffix}"), np.random.default_rng(0)))
    cut = str(tmp_path / f"cut{suffix}")
    with open(cut, "wb") as f:
        f.write(open(tensors, "rb").read()[:300])
    with pytest.raises(CheckpointFileError) as err:
        soft_d2.load_checkpoint(small_model(), cut)
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert f"{cut} could not be read: it is a pickle that is truncated or damaged" in str(err.value), str(err.value)
    read_checkpoint(evil, unsafe_unpickle=True)  # the documented opt-in runs the file's code
    assert os.path.exists(marker)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_unreadable_files_keep_the_readers_reason(tmp_path):
    """An intact file torch's weights-only reader cannot read is not called damaged, and its reason
    (what the unpickler met, after torch's general advice) is in the message."""
    from soft_d2.model.checkpoint_file import _reason

    path = str(tmp_path / "protocol4.pth")
    torch.save(small_model().state_dict(), path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.raises(CheckpointFileError) as err:
        soft_d2.load_checkpoint(small_model(), path)
    message = str(err.value)
    assert "older torch.save file (pickle protocol 4" in message and "that is complete" in message, message
    assert "WeightsUnpickler error: Unsupported operand" in message and "damaged" not in message, message
    advice = "Weights only load failed. " + "general advice " * 30
    assert _reason(pickle.UnpicklingError(advice + "WeightsUnpickler error: \n\nUnsupported operand 149\n\nCheck the "
                                          "documentation of torch.load to learn more")) \
        == "UnpicklingError: WeightsUnpickler error: Unsupported operand 149"
    long_line = "the archive's entry data/0 is " + "x" * 400 + " (the end)"
    assert _reason(RuntimeError(long_line + "\nsecond line")) == "RuntimeError: " + long_line


def test_unknown_variant_lists_the_valid_ones_closest_first():
    with pytest.raises(ValueError) as err:
        create_soft("soft_norm_tinyy")
    message = str(err.value)
    assert "'soft_norm_tinyy'" in message and "did you mean 'soft_norm_tiny'" in message
    listed = message.split("valid variants: ")[1].split(", ")
    assert listed[0] == "soft_norm_tiny" and sorted(listed) == sorted(soft_d2.VARIANTS)

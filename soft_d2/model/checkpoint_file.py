"""Checkpoint files to Python objects without running code from them, or an error saying why not.

``torch.load(weights_only=True)`` builds only tensors, plain containers and numbers, plus the extra
types in SAFE_GLOBALS (what the released SOFT checkpoints hold besides those). Detectron2's ``.pkl``
model-zoo files are plain pickles of numpy arrays; ``read_pickle_file`` allows exactly those. A file
that needs anything else is refused, naming the file and the type; ``unsafe_unpickle=True`` unpickles
it in full, which runs whatever code it carries: only for files you trust.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import os
import pickle
import re
import zipfile
from typing import Any

import numpy as np
import torch

# The timm training checkpoints of the release store their command line as an argparse.Namespace
# under 'args'; nothing else in them is outside weights_only's defaults.
SAFE_GLOBALS = [argparse.Namespace]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOL = b"\x80"  # pickles of protocol >= 2: older torch.save files and Detectron2's .pkl


class CheckpointFileError(ValueError):
    """A file cannot be read as a checkpoint: missing, empty, truncated, damaged or another format."""


class UnsafeCheckpointError(CheckpointFileError):
    """Reading the file would build objects other than weights (and so could run code)."""


def _describe_unreadable(path: str, err: BaseException) -> str:
    """Why ``path`` could not be read, from its first bytes and the reader's error."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        return f"{path} could not be read: the file is empty (0 bytes), not a PyTorch checkpoint"
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"{path} could not be read: it starts as a PyTorch checkpoint (torch.save's zip archive) but is "
                    f"truncated ({size} bytes, the archive's end is missing): an interrupted download, copy or save; "
                    f"fetch or copy it again")
        return f"{path} could not be read: it is a damaged PyTorch checkpoint ({size} bytes; {_short(err)})"
    if head.startswith(_PICKLE_PROTOCOL):
        return (f"{path} could not be read: it is pickle data (an older torch.save format or a .pkl file) that is "
                f"truncated or damaged ({size} bytes; {_short(err)})")
    return (f"{path} could not be read: it is not a checkpoint (neither torch.save's zip archive nor a pickle; "
            f"it starts with {head[:8]!r}, {size} bytes)")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:200] if text else type(err).__name__


def _unsafe_globals(path: str, err: BaseException) -> list[str]:
    """The types a torch.save file needs beyond the allowed ones (statically, nothing is built)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip archive: the weights_only unpickler names the first one it met
        found = re.findall(r"Unsupported global: GLOBAL (\S+) was not an allowed global", str(err))
    return sorted(set(found))


def _refusal(path: str, types: list[str], opt_in: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path} was not loaded: unpickling it would create {', '.join(types)}, which is neither a tensor, a "
        f"plain container nor a type the released SOFT checkpoints use ({', '.join(_name(t) for t in SAFE_GLOBALS)}). "
        f"Loading such a file runs code it carries. Only if you trust the file (e.g. you wrote it yourself), load "
        f"it in full with {opt_in} (unsafe)")


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointFileError(f"checkpoint {path!r} is not a file (a folder?)")


def read_torch_file(path: str | os.PathLike, *, unsafe_unpickle: bool = False,
                    opt_in: str = "unsafe_unpickle=True") -> Any:
    """``torch.load`` on the CPU with weights_only=True and SAFE_GLOBALS allowed.

    ``opt_in`` names the caller's switch for ``unsafe_unpickle`` in the refusal message.
    """
    path = os.fspath(path)
    _check_file(path)
    try:
        if unsafe_unpickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        unsafe = [] if unsafe_unpickle else _unsafe_globals(path, err)
        if unsafe:
            raise _refusal(path, unsafe, opt_in) from None
        raise CheckpointFileError(_describe_unreadable(path, err)) from None


# numpy's array and scalar rebuilders, wherever this numpy keeps them (numpy.core or numpy._core).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # pickle protocol 5
# What Detectron2 / Detectron1 / Caffe2 model-zoo .pkl files are made of: numpy arrays and scalars
# (pickled under numpy's old or new module name) and ordered dicts.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles store bytes written by Python 2
}


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _PICKLE_ALLOWED.get((module, name))
        if allowed is None:
            raise _UnsafeGlobal(f"{module}.{name}")
        return allowed


class _UnsafeGlobal(pickle.UnpicklingError):
    pass


def read_pickle_file(path: str | os.PathLike, *, unsafe_unpickle: bool = False,
                     opt_in: str = "unsafe_unpickle=True") -> Any:
    """A Detectron2-style ``.pkl`` (latin1 pickle of numpy arrays) without building anything else."""
    path = os.fspath(path)
    _check_file(path)
    with open(path, "rb") as f:
        try:
            if unsafe_unpickle:
                return pickle.load(f, encoding="latin1")
            return _WeightsUnpickler(f, encoding="latin1").load()
        except _UnsafeGlobal as err:
            raise _refusal(path, [str(err)], opt_in) from None
        except Exception as err:  # EOFError, UnpicklingError, ValueError, ... for bad files
            raise CheckpointFileError(_describe_unreadable(path, err)) from None

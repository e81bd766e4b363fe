"""Checkpoint files to Python objects without running code from them, or an error saying why not.

``torch.load(weights_only=True)`` builds only tensors, plain containers and numbers, plus the extra
types in SAFE_GLOBALS (what the released SOFT checkpoints hold besides those). Detectron2's ``.pkl``
model-zoo files and other plain ``pickle.dump`` files are read by ``read_pickle_file``, whose unpickler
builds the same tensors, containers and SAFE_GLOBALS plus numpy arrays and scalars, and nothing else.
``read_weights_file`` picks the reader from the file's first bytes (and a .pkl name). A file that
needs any other type is refused, naming the file and the type; ``unsafe_unpickle=True`` unpickles it
in full, which runs whatever code it carries: only for files you trust.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import io
import os
import pickle
import pickletools
import re
import zipfile
from typing import Any, Mapping

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


def _describe_unreadable(path: str, err: BaseException, *, plain_pickle: bool = False,
                         opt_in: str = "unsafe_unpickle=True") -> str:
    """Why ``path`` could not be read, from its first bytes, its pickle structure and the reader's error.

    ``plain_pickle``: the file was read as one ``pickle.dump`` (read_pickle_file), not as a torch.save file.
    """
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
        return f"{path} could not be read: it is a damaged PyTorch checkpoint ({size} bytes; {_reason(err)})"
    if plain_pickle and _complete_pickles(path, 1):
        return (f"{path} could not be read: it is a complete pickle ({size} bytes), but its objects could not be "
                f"built ({_reason(err)})")
    if head.startswith(_PICKLE_PROTOCOL):
        if not plain_pickle and _complete_pickles(path, _LEGACY_PICKLES) and "Weights only load failed" in str(err):
            return (f"{path} could not be read: it is an older torch.save file (pickle protocol {head[1]}, "
                    f"{size} bytes) that is complete, but torch.load(weights_only=True) cannot read it "
                    f"({_reason(err)}); if you trust it, load it with {opt_in} (unsafe)")
        kind = "a pickle" if plain_pickle else "an older torch.save file (pickle data)"
        return (f"{path} could not be read: it is {kind} that is truncated or damaged ({size} bytes; "
                f"{_reason(err)})")
    return (f"{path} could not be read: it is not a checkpoint (neither torch.save's zip archive nor a pickle; "
            f"it starts with {head[:8]!r}, {size} bytes)")


def _reason(err: BaseException) -> str:
    """The reader's error in one line: torch's weights-only failures by what the unpickler met (its
    message opens with general advice), any other error by its whole first line."""
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation of torch.load")[0]
        text = "WeightsUnpickler error: " + " ".join(detail.split())
    else:
        text = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# A torch.save file of the format before PyTorch 1.6 is five pickles (magic number, protocol version,
# system info, the object, its storage keys) followed by the storages' bytes.
_LEGACY_PICKLES = 5


def _complete_pickles(path: str, count: int) -> bool:
    """Whether the file's first ``count`` pickles are whole, opcode by opcode up to their STOP. Only the
    pickle's structure is parsed (pickletools), nothing is built."""
    with open(path, "rb") as f:
        try:
            for _ in range(count):
                for _op in pickletools.genops(f):
                    pass
        except Exception:  # ValueError for a cut or unknown opcode, ...
            return False
    return True


def _is_legacy_torch_file(head: bytes) -> bool:
    """Whether a pickle begins with torch.save's magic number (the format before PyTorch 1.6)."""
    ops = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if op.name not in ("PROTO", "FRAME"):
                ops.append((op.name, arg))
            if op.name == "STOP" or len(ops) > 2:
                break
    except Exception:
        return False
    return ops == [("LONG1", torch.serialization.MAGIC_NUMBER), ("STOP", None)]


def is_plain_pickle(path: str | os.PathLike) -> bool:
    """A ``pickle.dump`` file rather than a torch.save one: a pickle not opening with torch.save's magic
    number, or a ``.pkl`` file (Detectron2's model zoo; pickles of protocol 0 and 1 have no header)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC):
        return False
    if head.startswith(_PICKLE_PROTOCOL):
        return not _is_legacy_torch_file(head)
    return path.endswith(".pkl")


def _unsafe_globals(path: str, err: BaseException) -> list[str]:
    """The types a torch.save file needs beyond the allowed ones (statically, nothing is built)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip archive: the weights_only unpickler names the first one it met
        found = re.findall(r"Unsupported global: GLOBAL (\S+) was not an allowed global", str(err))
    return sorted(set(found))


def _refusal(path: str, types: list[str], opt_in: str, numpy: bool = False) -> UnsafeCheckpointError:
    allowed = "a tensor, a numpy array, a plain container" if numpy else "a tensor, a plain container"
    return UnsafeCheckpointError(
        f"{path} was not loaded: unpickling it would create {', '.join(types)}, which is neither {allowed} nor a "
        f"type the released SOFT checkpoints use ({', '.join(_name(t) for t in SAFE_GLOBALS)}). "
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
        raise CheckpointFileError(_describe_unreadable(path, err, opt_in=opt_in)) from None


def _storage_from_bytes(data: bytes) -> Any:
    """torch.storage._load_from_bytes, which a plain pickle of a tensor calls on the tensor's storage (a
    small torch.save file), with weights_only=True instead of its full unpickling."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.findall(r"Unsupported global: GLOBAL (\S+) was not an allowed global", str(err))
        if found:
            raise _UnsafeGlobal(found[0]) from None
        raise


# numpy's array and scalar rebuilders, wherever this numpy keeps them (numpy.core or numpy._core).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # pickle protocol 5
# What Detectron2 / Detectron1 / Caffe2 model-zoo .pkl files are made of: numpy arrays and scalars
# (pickled under numpy's old or new module name) and ordered dicts; and what pickle.dump writes for
# tensors and parameters, and for SAFE_GLOBALS: the types torch.load(weights_only=True) builds.
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
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    **{(t.__module__, t.__qualname__): t for t in SAFE_GLOBALS},
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
    """A ``pickle.dump`` file, e.g. a Detectron2-style ``.pkl`` (latin1 pickle of numpy arrays), building
    only numpy arrays and scalars, tensors, plain containers and SAFE_GLOBALS (numpy arrays stay numpy)."""
    path = os.fspath(path)
    _check_file(path)
    with open(path, "rb") as f:
        try:
            if unsafe_unpickle:
                return pickle.load(f, encoding="latin1")
            return _WeightsUnpickler(f, encoding="latin1").load()
        except _UnsafeGlobal as err:
            raise _refusal(path, [str(err)], opt_in, numpy=True) from None
        except Exception as err:  # EOFError, UnpicklingError, ValueError, ... for bad files
            raise CheckpointFileError(_describe_unreadable(path, err, plain_pickle=True, opt_in=opt_in)) from None


def numpy_to_tensors(obj: Any) -> Any:
    """``obj`` with its numeric numpy arrays and scalars, inside dicts, lists and tuples, as tensors."""
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
        array = np.asarray(obj, dtype=obj.dtype.newbyteorder("="), order="C")  # (keeps 0-d arrays 0-d)
        return torch.from_numpy(array if array.flags.writeable else array.copy())
    if isinstance(obj, (np.number, np.bool_)):
        return torch.tensor(obj.item())
    if isinstance(obj, Mapping):
        converted = {k: numpy_to_tensors(v) for k, v in obj.items()}
        return collections.OrderedDict(converted) if isinstance(obj, collections.OrderedDict) else converted
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(numpy_to_tensors(v) for v in obj)
    return obj


def read_weights_file(path: str | os.PathLike, *, unsafe_unpickle: bool = False,
                      opt_in: str = "unsafe_unpickle=True") -> Any:
    """Any checkpoint file: a torch.save file by ``read_torch_file``, a plain pickle (``is_plain_pickle``:
    a ``.pkl`` or another ``pickle.dump`` file) by ``read_pickle_file`` with its numpy arrays as tensors."""
    path = os.fspath(path)
    _check_file(path)
    if is_plain_pickle(path):
        return numpy_to_tensors(read_pickle_file(path, unsafe_unpickle=unsafe_unpickle, opt_in=opt_in))
    return read_torch_file(path, unsafe_unpickle=unsafe_unpickle, opt_in=opt_in)

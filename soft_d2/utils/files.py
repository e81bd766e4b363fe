"""Files the trainers write: checkpoints and their pointers, never left half-written."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[Any], Any]) -> None:
    """``write(f)`` into a temporary file in ``path``'s folder, then rename it over ``path``: a crash
    or a full disk never leaves a truncated checkpoint under the real name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp_{os.path.basename(path)}")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the checkpoint from other users
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

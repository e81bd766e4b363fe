import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """The release's reference data: $SOFT_D2_REFERENCE, else ../shared/reference beside the repo."""
    return Path(os.environ.get("SOFT_D2_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference():
    path = reference_dir()
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path} (set SOFT_D2_REFERENCE)")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def engine_dispatch(monkeypatch):
    """Send every Gaussian-kernel product, whatever its size, to the tiled paths (the compiled
    engine with its own tile size, or the streamed torch path): below STREAM_ELEMENTS dispatch
    otherwise uses the dense torch formula, and a "compiled" test would compare torch with torch."""
    monkeypatch.setattr("soft_d2.ops.streamed_torch.STREAM_ELEMENTS", 0)

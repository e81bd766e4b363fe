"""soft-d2: SOFT (Softmax-free Transformer) backbones for Detectron2 and timm."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version() -> str:
    for line in (ROOT / "soft_d2" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("soft_d2/__init__.py has no __version__")


setup(
    name="soft-d2",
    version=read_version(),
    description="SOFT (Softmax-free Transformer) backbones for Detectron2 and timm",
    packages=find_packages(include=["soft_d2", "soft_d2.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "timm>=1.0.9"],
)

"""soft-d2: SOFT (Softmax-free Transformer) backbones for Detectron2 and timm.

Builds the compiled Gaussian-kernel op ``soft_d2._C`` from csrc/: the CPU engine always, the CUDA
kernels too when FORCE_CUDA=1 or when a GPU and nvcc are present. If the extension cannot be built
(no compiler, no torch headers), the package is installed without it and runs on its pure-PyTorch
path (soft_d2.ops warns once). SOFT_D2_NO_EXT=1 skips the extension on purpose.
"""
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


def read_version() -> str:
    for line in (ROOT / "soft_d2" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("soft_d2/__init__.py has no __version__")


def want_cuda(cpp_extension) -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    import torch

    return torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None


def extension_setup() -> dict:
    """ext_modules + cmdclass for soft_d2._C, or {} when it cannot be built here."""
    if os.environ.get("SOFT_D2_NO_EXT", "0") == "1":
        return {}
    try:
        from torch.utils import cpp_extension
    except ImportError as err:  # torch missing at build time: pure-PyTorch install
        print(f"[soft-d2] not building soft_d2._C ({err})", file=sys.stderr)
        return {}
    sources = [str((CSRC / name).relative_to(ROOT))
               for name in ("bindings.cpp", "tiled_engine.cpp", "roi_align_cpu.cpp")]
    # The C++ standard is the one torch's cpp_extension picks for its headers. -fopenmp: the engines'
    # at::parallel_for (an inline template) runs its whole range on the calling thread in code
    # compiled without OpenMP; the runtime symbols resolve to the libgomp libtorch_cpu loads.
    cxx = ["-O3", "-fopenmp"]
    if want_cuda(cpp_extension):
        ext = cpp_extension.CUDAExtension(
            "soft_d2._C",
            sources + [str((CSRC / "fused_forward_cuda.cu").relative_to(ROOT))],
            define_macros=[("SOFT_D2_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
        )
    else:
        ext = cpp_extension.CppExtension("soft_d2._C", sources, extra_compile_args=cxx)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExt.wrap(cpp_extension)}}


class OptionalBuildExt:
    """torch's BuildExtension, but a failed compile leaves a working pure-PyTorch install."""

    @staticmethod
    def wrap(cpp_extension):
        base = cpp_extension.BuildExtension.with_options(use_ninja=True)

        class Build(base):
            def run(self):
                try:
                    super().run()
                except Exception as err:  # noqa: BLE001 - any compiler failure
                    if os.environ.get("SOFT_D2_REQUIRE_EXT", "0") == "1":
                        raise
                    print(f"[soft-d2] WARNING: soft_d2._C failed to build ({err}); "
                          "installing the pure-PyTorch path only", file=sys.stderr)

        return Build


setup(
    name="soft-d2",
    version=read_version(),
    description="SOFT (Softmax-free Transformer) backbones for Detectron2 and timm",
    license="Apache-2.0",
    # classification: the ImageNet trainer (python -m classification.train, or its script)
    packages=find_packages(include=["soft_d2", "soft_d2.*", "classification"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "timm>=1.0.9"],
    **extension_setup(),
)

#!/usr/bin/env bash
# Compile check of the CUDA half of soft_d2._C on a machine without a GPU (CI runs it every time):
# builds the extension with FORCE_CUDA=1 into a scratch folder, loads that .so on the CPU and runs
# its CPU path once. A CUDA compile error fails here. Needs nvcc (CUDA_HOME, default
# /usr/local/cuda) and the pip nvidia headers torch's CUDA headers include (cusparse.h,
# cublas_v2.h: <site-packages>/nvidia/cu13/include on CPATH). Leaves the installed (CPU) extension alone.
#
#   bash tools/check_cuda_build.sh [python]      # default python: .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${1:-.venv/bin/python}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "[cuda-check] no nvcc at $CUDA_HOME/bin/nvcc" >&2; exit 1; }
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export CPATH="$SITE/nvidia/cu13/include${CPATH:+:$CPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # H100/H200; one arch keeps it ~3 min
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

echo "[cuda-check] compiling soft_d2._C with CUDA (arch $TORCH_CUDA_ARCH_LIST)"
FORCE_CUDA=1 SOFT_D2_REQUIRE_EXT=1 "$VPY" setup.py -q build_ext \
    --build-lib "$SCRATCH/lib" --build-temp "$SCRATCH/tmp" >"$SCRATCH/build.log" 2>&1 \
    || { cat "$SCRATCH/build.log" >&2; echo "[cuda-check] CUDA build FAILED" >&2; exit 1; }

SO=$(ls "$SCRATCH"/lib/soft_d2/_C*.so)
"$VPY" - "$SO" <<'PY'
import importlib.machinery, importlib.util, sys
import torch

path = sys.argv[1]
loader = importlib.machinery.ExtensionFileLoader("soft_d2._C", path)
C = importlib.util.module_from_spec(importlib.util.spec_from_loader("soft_d2._C", loader))
loader.exec_module(C)
assert C.built_with_cuda(), "built without SOFT_D2_WITH_CUDA"
a, b, w = torch.randn(2, 50, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 3)
g = torch.exp(-0.5 * torch.cdist(a.double(), b.double()).square())
out = C.kernel_matmul_forward(a, b, w, 0)
assert torch.allclose(out.double(), g @ w.double(), rtol=1e-5, atol=1e-6)
print(f"[cuda-check] CUDA build imports on the CPU and computes correctly: {path.rsplit('/', 1)[-1]}")
PY

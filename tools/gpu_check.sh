#!/usr/bin/env bash
# GPU check of the compiled attention op, for an H100/H200 machine (Python 3.12, torch, nvcc; no
# detectron2 needed): builds soft_d2._C from source with CUDA, runs the op tests on the GPU, the
# classification training throughput (SOFT-Tiny, 224), then the op benchmark on CUDA with the
# bandwidth / FLOP floors per shape. Output and logs go to ${OUT:-./gpu_check_out}, each step's
# file written as it finishes (a run cut short still leaves the steps before). The op benchmark
# writes its table as the "ops-cuda" section of $OUT/benchmarks.md ("ops-cpu" in a dry run;
# benchmarks/doc_sections.py), so a dry run and a GPU run into one $OUT leave both sections.
#
#   bash tools/gpu_check.sh [PYTHON]            # full check
#   DRY_RUN=1 bash tools/gpu_check.sh [PYTHON]  # CPU-only rehearsal: no CUDA build, CPU benchmark of the small shape
#
# PYTHON: the interpreter with torch (and nvcc's CUDA for it): the argument, else $PYTHON, else the
# project's .venv/bin/python. Where torch is installed for the system Python: bash tools/gpu_check.sh python3
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-.venv/bin/python}}
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "no Python '$PY': create .venv (bash tools/install.sh), or name one: bash tools/gpu_check.sh /path/to/python" >&2
    exit 2
fi
OUTDIR=${OUT:-gpu_check_out}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $*"; }

step "machine"
echo "python: $PY" | tee "$OUTDIR/machine.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())" | tee -a "$OUTDIR/machine.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null | tee -a "$OUTDIR/machine.txt"

if [ "${DRY_RUN:-0}" = 1 ]; then
    step "build (dry run: CPU extension)"
    SOFT_D2_REQUIRE_EXT=1 "$PY" setup.py -q build_ext --inplace >"$OUTDIR/build.log" 2>&1 || status=1
else
    step "build soft_d2._C with CUDA"
    export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
    rm -f soft_d2/_C*.so
    # On the GPU machines we tested on, CXX/CC name a wrapper in /opt/gcc whose builds crash (segfault)
    # on the first C++ exception, i.e. on any failed input check; the system compiler builds a working
    # extension.
    [ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++
    FORCE_CUDA=1 SOFT_D2_REQUIRE_EXT=1 MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace \
        >"$OUTDIR/build.log" 2>&1 || { tail -40 "$OUTDIR/build.log"; exit 1; }
    # register/shared-memory report of the fused kernels (spills would show here)
    "$CUDA_HOME/bin/cuobjdump" --dump-resource-usage build/temp*/csrc/fused_forward_cuda.o \
        >"$OUTDIR/resource_usage.txt" 2>&1 && grep -E "Function|REG" "$OUTDIR/resource_usage.txt" | head -20
fi
"$PY" -c "import soft_d2.ops as o; print(o.backend_summary())" || status=1
# A failed input check inside the extension must raise, not kill the process (see CC/CXX above).
"$PY" -c "
import torch
from soft_d2 import _C
try:
    _C.kernel_matmul_forward(torch.randn(1, 10, 4), torch.randn(1, 6, 4), torch.randn(1, 7, 3), 0)
except RuntimeError as err:
    print('extension errors raise RuntimeError:', err)
" || { echo "the extension crashed on an input check: rebuild it with the system compiler"; status=1; }

step "op tests (GPU tests must run here, not skip)"
"$PY" -m pytest -q -rs -p no:cacheprovider tests/test_ops_cuda.py tests/test_ops_compiled.py \
    tests/test_ops_errors.py tests/test_ops_dispatch.py 2>&1 | tee "$OUTDIR/tests.txt" | tail -15
grep -qE "[0-9]+ failed|error" "$OUTDIR/tests.txt" && status=1
if [ "${DRY_RUN:-0}" != 1 ] && grep -q "needs a CUDA GPU" "$OUTDIR/tests.txt"; then
    echo "GPU tests were skipped on a GPU machine"; status=1
fi

step "classification training throughput (SOFT-Tiny, 224)"
if [ "${DRY_RUN:-0}" = 1 ]; then
    "$PY" benchmarks/classification_step.py --size 64 --batch 4 --steps 1 >"$OUTDIR/classification.md" || status=1
else
    "$PY" benchmarks/classification_step.py --device cuda --batch 128 --steps 10 --precisions bf16 fp32 \
        >"$OUTDIR/classification.md" || status=1
fi
cat "$OUTDIR/classification.md"

step "op benchmark"
if [ "${DRY_RUN:-0}" = 1 ]; then
    "$PY" benchmarks/ops.py --shapes "224 stage-1" --repeats 3 --write "$OUTDIR/benchmarks.md" || status=1
else
    "$PY" benchmarks/ops.py --device cuda --repeats 20 --write "$OUTDIR/benchmarks.md" || status=1
fi
echo; cat "$OUTDIR/benchmarks.md"
exit $status

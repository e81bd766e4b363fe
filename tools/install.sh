#!/usr/bin/env bash
# Sets up soft-d2 on a fresh machine: a virtual environment with the pinned PyTorch, detectron2,
# timm and the rest, then our own package (and its compiled op, where it builds).
# Running it again is fast and changes nothing that is already right.
#
#   bash tools/install.sh            # creates ./.venv (override: SOFT_D2_VENV=/path)
#
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SOFT_D2_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pip_q() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }

# PyTorch first (the rest resolves against it), then everything pinned in requirements.txt.
pip_q torch==2.14.1 torchvision==0.29.1
pip_q -r requirements.txt

# detectron2: keep one that already imports; else install upstream's Python sources from the
# index package sal-detectron2 (a cp310-tagged wheel of pure-Python files). Re-tagged
# py3-none-any so pip installs it on any CPython 3.
if "$VPY" -c "import detectron2" 2>/dev/null; then
    echo "[install] detectron2 already importable: kept"
else
    CACHE=.cache/wheels
    mkdir -p "$CACHE"
    WHEEL="$CACHE/sal_detectron2-0.7.2-py3-none-any.whl"
    if [ ! -f "$WHEEL" ]; then
        echo "[install] fetching detectron2 (sal-detectron2==0.7.2)"
        TMP=$(mktemp -d)
        "$VPY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
            --python-version 3.10 --platform manylinux2014_x86_64 -d "$TMP" sal-detectron2==0.7.2
        mv "$TMP"/sal_detectron2-0.7.2-*.whl "$WHEEL"
        rm -rf "$TMP"
    fi
    pip_q --no-deps "$WHEEL"
    "$VPY" -c "import detectron2" || { echo "[install] detectron2 does not import" >&2; exit 1; }
fi

# Our package, editable, built against the torch above (no build isolation: the compiled op
# needs that torch's headers).
pip_q --no-build-isolation --no-deps -e .
"$VPY" -c "import soft_d2; print('[install] soft_d2', soft_d2.__version__, 'ready;', soft_d2.ops.backend_summary())"

#!/usr/bin/env bash
# The whole user pipeline on built-in data (no download), the README's quick start:
#   1. pretrain SOFT-Tiny-Norm on the built-in shapes classification set (classification/train.py),
#   2. fine-tune Mask R-CNN from that checkpoint on the built-in detection set (train_net.py),
#   3. evaluate (COCO box/mask AP) and draw predictions.
# Extra arguments go to train_net.py as config overrides (e.g. SOLVER.MAX_ITER 100).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # spin-waiting OpenMP slows shared CPUs (docs/IMPLEMENTATION.md)

CLS_CONFIG=classification/configs/quickstart_soft_norm_tiny_shapes.yaml
DET_CONFIG=configs/quickstart/mask_rcnn_soft_norm_tiny_shapes_finetune.yaml
CLS_OUT=output/quickstart_cls
DET_OUT=output/quickstart_mask_rcnn_finetune

start=$(date +%s)
echo "== 1/2 pretraining ($CLS_CONFIG -> $CLS_OUT)"
"$PY" classification/train.py --config "$CLS_CONFIG" --output "$CLS_OUT"
mid=$(date +%s)
echo "== 2/2 fine-tuning + evaluation ($DET_CONFIG, MODEL.WEIGHTS $CLS_OUT/best.pth -> $DET_OUT)"
"$PY" train_net.py --config-file "$DET_CONFIG" MODEL.WEIGHTS "$CLS_OUT/best.pth" OUTPUT_DIR "$DET_OUT" "$@"
end=$(date +%s)

"$PY" - "$CLS_OUT" "$DET_OUT" $((mid - start)) $((end - mid)) <<'PYEOF'
import json, os, sys
cls_out, det_out, t_cls, t_det = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print("\n== pipeline summary")
with open(os.path.join(cls_out, "metrics.jsonl")) as f:
    last = json.loads(f.read().strip().splitlines()[-1])
ema = f" (EMA {last['val_ema']['top1']:.1f})" if "val_ema" in last else ""
print(f"pretraining: val top-1 {last['val']['top1']:.1f}{ema} after {last['epoch'] + 1} epochs")
results = json.load(open(os.path.join(det_out, "results.json")))
for task, metrics in results.items():
    print(f"{task}: AP {metrics['AP']:.1f}  AP50 {metrics['AP50']:.1f}  AP75 {metrics['AP75']:.1f}")
print(f"wall time: pretraining {t_cls / 60:.1f} min, fine-tuning + evaluation {t_det / 60:.1f} min, "
      f"total {(t_cls + t_det) / 60:.1f} min; predictions drawn to {det_out}/predictions.jpg")
PYEOF

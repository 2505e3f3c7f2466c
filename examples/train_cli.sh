#!/usr/bin/env bash
# Train one example net with the caffe tool, then score it with caffe-layers: thresholds
# calibrated on the validation set, metrics and a precision-recall plot on the test set.
# From the repository root, after scripts/setup.sh:
#
#   examples/train_cli.sh [sigmoid_ce|focal|softmax]        (default: focal)
#   RESUME=runs/focal/focal_iter_1000.solverstate examples/train_cli.sh focal
#
# Uses prototxt/VARIANT_solver.prototxt as it is: the data from runs/digits/ (made here first if
# missing), snapshots, the log, thresholds and plots into runs/VARIANT/.
set -euo pipefail

variant="${1:-focal}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.venv/bin"
solver="prototxt/${variant}_solver.prototxt"
deploy="prototxt/${variant}_deploy.prototxt"
out="runs/$variant"

[ -f "$solver" ] || { echo "train_cli: no $solver here (run from the repository root; variants: sigmoid_ce, focal, softmax)" >&2; exit 2; }
[ -f runs/digits/train.txt ] || "$bin/python" "$root/examples/digits_data.py" --out runs/digits
mkdir -p "$out"                                    # Caffe stops if the snapshot folder is missing
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"   # one thread: runs repeat to the bit

# the caffe tool logs to stderr (INFO and up): keep it, and show it
GLOG_minloglevel=0 "$bin/caffe" train --solver "$solver" ${RESUME:+--snapshot "$RESUME"} 2>&1 | tee "$out/train.log"

max_iter="$(sed -n 's/^max_iter: *\([0-9]*\).*/\1/p' "$solver")"
weights="$out/${variant}_iter_${max_iter}.caffemodel"
net=(--model "$deploy" --weights "$weights" --activation none)   # the deploy net ends in probabilities
"$bin/caffe-layers" calibrate "${net[@]}" --data runs/digits/val.h5 -o "$out/thresholds.json"
"$bin/caffe-layers" evaluate "${net[@]}" --data runs/digits/test.h5 --thresholds "$out/thresholds.json" \
  --plot "$out/precision_recall.png" | tee "$out/evaluate.txt"

#!/usr/bin/env bash
# Train a Caffe solver on several GPUs when the net has Python layers (such as caffe_layers).
#
#   train_multi_gpu.sh SOLVER [GPU_ID ...]     e.g. train_multi_gpu.sh solver.prototxt 0 1
#
# With no GPU ids it uses every GPU that nvidia-smi lists. Environment:
#   SNAPSHOT=file.solverstate   resume from a snapshot
#   TIMING=1                    print per-layer forward/backward and allreduce times
#   CAFFE_ROOT                  Caffe install with python/train.py (default /opt/caffe, as in
#                               docker/Dockerfile)
#   PYTHON                      interpreter (default python3)
#
# Why not `caffe train -gpu 0,1`: the caffe tool runs its GPUs as threads of one process, which
# would share one Python interpreter, so Caffe refuses Python layers there ("PythonLayer does
# not support CLI Multi-GPU, use train.py"). Caffe's python/train.py starts one process per GPU
# instead and averages the gradients with NCCL; this script checks its input and runs it.
# train.py always builds an SGDSolver, so a solver of another type is refused here rather than
# silently trained with SGD.
set -euo pipefail

die() { echo "train_multi_gpu: $*" >&2; exit 1; }
python="${PYTHON:-python3}"

[ $# -ge 1 ] || die "usage: train_multi_gpu.sh SOLVER [GPU_ID ...]"
solver="$1"; shift
[ -f "$solver" ] || die "solver file not found: $solver"
train_py="${CAFFE_ROOT:-/opt/caffe}/python/train.py"
[ -f "$train_py" ] || die "Caffe's train.py not found at $train_py (set CAFFE_ROOT to the Caffe install)"

gpus=("$@")
if [ ${#gpus[@]} -eq 0 ]; then
  command -v nvidia-smi >/dev/null || die "no GPU ids given, and no nvidia-smi to list the GPUs"
  count="$(nvidia-smi --list-gpus | grep -c '^GPU ' || true)"
  [ "$count" -ge 1 ] || die "nvidia-smi lists no GPU (run the container with --gpus all)"
  mapfile -t gpus < <(seq 0 $((count - 1)))
fi
for gpu in "${gpus[@]}"; do
  [[ "$gpu" =~ ^[0-9]+$ ]] || die "GPU ids are integers (got '$gpu')"
done

# The solver's type, read with Caffe's own proto (a text search would also see the `type:` of
# the layers of an inline net_param). The deprecated enum solver_type wins when it is set.
solver_type="$("$python" - "$solver" <<'PY'
import sys
from google.protobuf import text_format
from caffe.proto import caffe_pb2
param = caffe_pb2.SolverParameter()
with open(sys.argv[1]) as handle:
    text_format.Merge(handle.read(), param)
if param.HasField("solver_type"):
    print(caffe_pb2.SolverParameter.SolverType.Name(param.solver_type))
else:
    print(param.type)
PY
)" || die "cannot read $solver as a Caffe solver (error above; is Caffe's python/ on PYTHONPATH?)"
case "$solver_type" in
  SGD) ;;
  *) die "$solver has type $solver_type, but train.py always trains with SGDSolver; use type: \"SGD\"" ;;
esac

args=(--solver "$solver" --gpus "${gpus[@]}")
[ -z "${SNAPSHOT:-}" ] || args+=(--snapshot "$SNAPSHOT")
[ "${TIMING:-0}" != 1 ] || args+=(--timing)

echo "train_multi_gpu: $python $train_py ${args[*]}" >&2
exec "$python" "$train_py" "${args[@]}"

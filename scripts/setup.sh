#!/usr/bin/env bash
# One set-up for a fresh Debian machine: system packages, .venv with pinned Python packages,
# Caffe (cached build, or the user's own), the links that make `import caffe` and
# `.venv/bin/caffe` work, and a smoke test that proves it. Safe to run again: each step
# skips what is already done.
#
# Environment:
#   PYTHON            interpreter for .venv (default python3)
#   REQUIREMENTS      pinned packages for .venv (default requirements.txt; docker/Dockerfile passes
#                     docker/requirements-py310.txt, its pins for Ubuntu 22.04's Python 3.10)
#   CAFFE_ROOT        use this built Caffe tree (python/ and build/tools/caffe or bin/caffe) instead
#   CAFFE_SOURCE_DIR  build this local Caffe source tree instead of the pinned source tarball
#   CAFFE_SOURCE, CAFFE_SHA256  where to fetch the Caffe source tarball, and its checksum
#                     (see scripts/build_caffe.sh)
#   CAFFE_LAYERS_CACHE  where Caffe builds are cached (default ~/.cache/caffe-layers)
# If PYTHON can already `import caffe`, that Caffe is used and nothing is built.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="${REQUIREMENTS:-$ROOT/requirements.txt}"
STEP="start"
step() { STEP="$1"; echo "==> setup: $1" >&2; }
# shellcheck disable=SC2154  # rc is assigned inside the trap
trap 'rc=$?; [ $rc -eq 0 ] || echo "setup: FAILED at step \"$STEP\" (exit $rc)" >&2' EXIT

step "system packages"
# the Caffe build's, listed once in build_caffe.sh (docker/Dockerfile installs the same list)
packages="$(bash "$ROOT/scripts/build_caffe.sh" packages)"
mapfile -t APT_PACKAGES <<< "$packages"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "python virtual environment (.venv)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
req_stamp="$VENV/.requirements.sha256"
[ -f "$REQUIREMENTS" ] || { echo "setup: REQUIREMENTS=$REQUIREMENTS does not exist" >&2; exit 1; }
req_hash="$(cat "$REQUIREMENTS" "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$req_stamp" 2>/dev/null)" != "$req_hash" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
  echo "$req_hash" > "$req_stamp"
fi
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

step "caffe"
if [ -n "${CAFFE_ROOT:-}" ]; then
  pycaffe_dir="$CAFFE_ROOT/python"
  caffe_tool="$CAFFE_ROOT/build/tools/caffe"
  [ -x "$caffe_tool" ] || caffe_tool="$CAFFE_ROOT/bin/caffe"
  [ -d "$pycaffe_dir/caffe" ] || { echo "setup: CAFFE_ROOT=$CAFFE_ROOT has no python/caffe" >&2; exit 1; }
  [ -x "$caffe_tool" ] || { echo "setup: CAFFE_ROOT=$CAFFE_ROOT has no build/tools/caffe or bin/caffe" >&2; exit 1; }
elif pycaffe_init="$("$PYTHON" -c 'import caffe; print(caffe.__file__)' 2>/dev/null)"; then
  pycaffe_dir="$(dirname "$(dirname "$pycaffe_init")")"
  caffe_tool="$(command -v caffe || true)"
  [ -n "$caffe_tool" ] || { echo "setup: $PYTHON imports caffe but no caffe tool is on PATH" >&2; exit 1; }
else
  prefix="$(bash "$ROOT/scripts/build_caffe.sh" build "$VENV/bin/python")"
  pycaffe_dir="$prefix/python"
  caffe_tool="$prefix/bin/caffe"
fi

step "links: import caffe from .venv, .venv/bin/caffe"
echo "$pycaffe_dir" > "$site/caffe_layers_pycaffe.pth"
package_parent="$("$VENV/bin/python" -c 'import caffe_layers, os; print(os.path.dirname(os.path.dirname(os.path.abspath(caffe_layers.__file__))))')"
libpython_dir="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
cat > "$VENV/bin/caffe" <<WRAPPER
#!/bin/sh
# The caffe tool, with caffe_layers and this environment's packages importable by Python layers.
PYTHONPATH="$package_parent:$site:$pycaffe_dir\${PYTHONPATH:+:\$PYTHONPATH}"
LD_LIBRARY_PATH="$libpython_dir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PYTHONPATH LD_LIBRARY_PATH
exec "$caffe_tool" "\$@"
WRAPPER
chmod +x "$VENV/bin/caffe"

step "smoke test: import caffe and caffe_layers"
"$VENV/bin/python" -c "
import caffe, caffe_layers
assert 'Python' in caffe.layer_type_list(), 'this Caffe was built without the Python layer (WITH_PYTHON_LAYER)'
"
step "smoke test: the caffe tool runs a net with a caffe_layers Python layer"
smoke_log="$(mktemp)"
if ! (cd "$ROOT" && GLOG_minloglevel=0 "$VENV/bin/caffe" time -model scripts/smoke.prototxt -iterations 1 > "$smoke_log" 2>&1) \
   || ! grep -q "Initial loss: " "$smoke_log"; then
  tail -30 "$smoke_log" >&2
  exit 1
fi
rm -f "$smoke_log"
STEP="done"
echo "==> setup: ready (.venv/bin/python imports caffe; .venv/bin/caffe runs the caffe tool)" >&2

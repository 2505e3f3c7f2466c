#!/usr/bin/env bash
# The project's Caffe recipe: one pinned source, one set of patches, one set of CMake flags. The
# CPU set-up (scripts/setup.sh) and the CUDA image (docker/Dockerfile) both build from it.
#
#   build_caffe.sh build PYTHON                  CPU build for this interpreter, cached; prints its prefix
#   build_caffe.sh install cuda PYTHON PREFIX    CUDA build, `make install`ed into PREFIX (docker/Dockerfile)
#   build_caffe.sh prepare DIR                   fetch, verify, unpack and patch the source into DIR (no compile)
#   build_caffe.sh fetch                         fetch and verify the source tarball; prints its path
#   build_caffe.sh flags cpu|cuda PYTHON PREFIX  the CMake flags, one a line
#   build_caffe.sh key PYTHON                    the cache key of the CPU build
#   build_caffe.sh verify FILE SHA256            check a file's sha256, fail loudly on mismatch
#   build_caffe.sh patch SOURCE_DIR              apply the project's patches to a Caffe source tree
#   build_caffe.sh packages                      the Debian/Ubuntu packages a build needs, one a line
#
# Source: BVLC Caffe at commit 99bd997 (2018-08-21), as the orig tarball of Debian's `caffe`
# source package (1.0.0+git20180821.99bd997): byte for byte `git archive 99bd997`, with no
# top-level folder. It is checked against CAFFE_SHA256 before it is unpacked, whichever way it
# came. Ways, tried in order (CAFFE_SOURCE, space-separated, overrides the list):
#   apt    Debian's bullseye source package through a private apt configuration (the system's apt
#          sources are not touched); skipped where there is no Debian archive keyring (Ubuntu)
#   URLs   snapshot.debian.org, which keeps every file Debian ever published: by sha1, then by
#          its pool path at a date when bullseye had it. Any URL curl reads works (https, file://).
# The verified tarball is kept in ${CAFFE_LAYERS_CACHE:-~/.cache/caffe-layers}/sources/.
# CAFFE_SOURCE_DIR=/path/to/caffe builds a local source tree instead (patched in a copy).
#
# The CPU prefix (bin/caffe, lib/, python/caffe) lives under $CACHE/caffe-<key>, where the key
# hashes what decides the result: the source's sha256, the recipe's functions (unpacking,
# patches, CMake flags), the targets, the interpreter's and numpy's versions. A prefix is trusted
# only once its `.complete` stamp exists; a build holds a lock, and a set-up that waits for it
# says so.
set -euo pipefail

CAFFE_ORIG_TARBALL="caffe_1.0.0+git20180821.99bd997.orig.tar.gz"
CAFFE_ORIG_SHA256="e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c"
CAFFE_ORIG_SHA1="4061e9b6915b7507ff30f83c1d1b74346fe026e2"  # snapshot.debian.org names files by sha1
CAFFE_DEB_VERSION="1.0.0+git20180821.99bd997-8"               # bullseye's source package (apt route)
DURABLE_URLS="https://snapshot.debian.org/file/$CAFFE_ORIG_SHA1 https://snapshot.debian.org/archive/debian/20230601T000000Z/pool/main/c/caffe/$CAFFE_ORIG_TARBALL"
CAFFE_SOURCE="${CAFFE_SOURCE:-apt $DURABLE_URLS}"
CAFFE_SHA256="${CAFFE_SHA256:-$CAFFE_ORIG_SHA256}"
DEBIAN_MIRROR="${CAFFE_LAYERS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_KEYRING="${CAFFE_LAYERS_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
CACHE_ROOT="${CAFFE_LAYERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caffe-layers}"
JOBS="${JOBS:-$(nproc)}"
# GPU code: real binaries for Volta (70) to Hopper (90), plus PTX for 90 that newer GPUs
# JIT-compile. CUDA 12 builds nothing older than 50, and Caffe's own list (20 ... 61) fails there.
CUDA_ARCH_BIN="${CUDA_ARCH_BIN:-70 75 80 86 89 90}"
CUDA_ARCH_PTX="${CUDA_ARCH_PTX:-90}"
LOCK_REPORT_S="${CAFFE_LAYERS_LOCK_REPORT_S:-60}"  # while waiting for a lock, say so this often

# Debian 12 and Ubuntu 22.04 names alike. curl fetches the durable URLs, perl applies the patches.
PACKAGES=(
  build-essential cmake curl ca-certificates perl
  libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev liblmdb-dev
  libopenblas-dev libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev
)
BUILD_TARGETS="caffe pycaffe caffe.bin"

die() { echo "build_caffe: $*" >&2; exit 1; }
log() { echo "build_caffe: $*" >&2; }

CLEANUP=()  # temporary paths, removed however the script ends
cleanup() { [ ${#CLEANUP[@]} -eq 0 ] || rm -rf -- "${CLEANUP[@]}"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sha256() { sha256sum "$1" | cut -d' ' -f1; }

verify() {  # FILE SHA256 [NAME]
  local file="$1" want="$2" name="${3:-$(basename "$1")}" got
  [ -f "$file" ] || die "checksum: $file does not exist"
  got="$(sha256 "$file")"
  [ "$got" = "$want" ] || die "checksum mismatch for $name: expected sha256 $want, got $got"
}

# ---- the source ------------------------------------------------------------------------------

fetch_apt() {  # DEST: Debian's orig tarball through a private apt configuration
  local dest="$1" apt
  [ -r "$DEBIAN_KEYRING" ] || { log "apt route skipped: no Debian archive keyring at $DEBIAN_KEYRING"; return 1; }
  command -v apt-get > /dev/null || { log "apt route skipped: no apt-get"; return 1; }
  apt="$(mktemp -d "$CACHE_ROOT/sources/.apt.XXXXXX")"
  CLEANUP+=("$apt")
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/dl"
  echo "deb-src [signed-by=$DEBIAN_KEYRING] $DEBIAN_MIRROR bullseye main" > "$apt/sources.list"
  : > "$apt/status"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State=$apt" -o "Dir::State::Lists=$apt/lists" -o "Dir::State::status=$apt/status"
              -o "Dir::Cache=$apt" -o "Dir::Cache::archives=$apt/archives" -o APT::Sandbox::User=root)
  log "fetching Debian's source package caffe=$CAFFE_DEB_VERSION (private apt configuration, $DEBIAN_MIRROR)"
  apt-get "${opts[@]}" -qq update >&2 || { log "apt route failed: apt-get update ($DEBIAN_MIRROR bullseye)"; return 1; }
  (cd "$apt/dl" && apt-get "${opts[@]}" -qq source --download-only "caffe=$CAFFE_DEB_VERSION" >&2) \
    || { log "apt route failed: $DEBIAN_MIRROR no longer has the source package caffe=$CAFFE_DEB_VERSION"; return 1; }
  [ -f "$apt/dl/$CAFFE_ORIG_TARBALL" ] || { log "apt route failed: apt-get source gave no $CAFFE_ORIG_TARBALL"; return 1; }
  mv "$apt/dl/$CAFFE_ORIG_TARBALL" "$dest"
}

fetch_url() {  # URL DEST
  log "downloading $1"
  curl -fsSL --retry 3 --connect-timeout 30 -o "$2" "$1" || { log "download failed: $1"; return 1; }
}

fetch_tarball() {  # sets TARBALL: the verified source tarball, in the cache
  local store="$CACHE_ROOT/sources" source sources tmp
  TARBALL="$store/caffe-$CAFFE_SHA256.tar.gz"
  if [ -f "$TARBALL" ] && [ "$(sha256 "$TARBALL")" = "$CAFFE_SHA256" ]; then
    log "using the verified Caffe source $TARBALL"
    return
  fi
  mkdir -p "$store"
  read -ra sources <<< "$CAFFE_SOURCE"
  for source in "${sources[@]}"; do
    tmp="$(mktemp -d "$store/.download.XXXXXX")"  # this process's own folder, removed on exit
    CLEANUP+=("$tmp")
    tmp="$tmp/$CAFFE_ORIG_TARBALL"
    if [ "$source" = apt ]; then fetch_apt "$tmp" || continue
    else fetch_url "$source" "$tmp" || continue
    fi
    # a mismatch is not a download error: stop here, never try the next source
    verify "$tmp" "$CAFFE_SHA256" "the Caffe source from $source"
    mv "$tmp" "$TARBALL"
    log "verified the Caffe source (sha256 $CAFFE_SHA256) from $source"
    return
  done
  die "could not fetch the Caffe source from any of: $CAFFE_SOURCE. Set CAFFE_SOURCE to a URL of" \
      "$CAFFE_ORIG_TARBALL (sha256 $CAFFE_SHA256), or put that file at $TARBALL"
}

unpack_source() {  # TARBALL DIR: a tarball with one top-level folder (GitHub's archives) is unwrapped
  local tarball="$1" dir="$2" listing tops strip=0
  listing="$(tar -tzf "$tarball" | sed 's|^\./||' | grep -v '^$')" || die "cannot read $tarball as a .tar.gz"
  tops="$(cut -d/ -f1 <<< "$listing" | sort -u)"
  if [ "$(wc -l <<< "$tops")" -eq 1 ] && ! grep -qvF -- "$tops/" <<< "$listing"; then strip=1; fi
  mkdir -p "$dir"
  tar -xzf "$tarball" -C "$dir" --strip-components="$strip" || die "cannot unpack $tarball"
}

# ---- the patches -----------------------------------------------------------------------------

replace() {  # FILE COUNT OLD NEW: replace the COUNT occurrences of a literal text; fail on any other count
  local file="$1" count="$2" old="$3" new="$4" found
  [ -f "$file" ] || die "patch: $file does not exist (has the Caffe source changed?)"
  found="$({ grep -oF -- "$old" "$file" || true; } | wc -l)"
  [ "$found" -eq "$count" ] \
    || die "patch: text to patch not found $count time(s) in $file (found $found): '$old' (has the Caffe source changed?)"
  OLD="$old" NEW="$new" perl -0pi -e 's/\Q$ENV{OLD}\E/$ENV{NEW}/g' "$file"
  grep -qF -- "$new" "$file" || die "patch: replacement did not land in $file: '$new'"
  if [[ "$new" != *"$old"* ]] && grep -qF -- "$old" "$file"; then
    die "patch: '$old' is still in $file after patching"
  fi
}

# shellcheck disable=SC2016  # the patches' texts hold CMake's ${...}, literally
patch_tree() {  # SOURCE_DIR: the project's patches, each guarded (see replace)
  local src="$1"
  [ -f "$src/src/caffe/util/io.cpp" ] || die "patch: $src is not a Caffe source tree (no src/caffe/util/io.cpp)"
  # 1. protobuf >= 3.18 has only the one-argument CodedInputStream::SetTotalBytesLimit (older
  #    versions, such as Ubuntu 22.04's 3.12, have it too).
  replace "$src/src/caffe/util/io.cpp" 1 \
    "SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)" "SetTotalBytesLimit(kProtoReadBytesLimit)"
  # 2. Boost.Python: look for the component under Boost's name for it, python310 for -Dpython_version=3.10
  #    (Debian's cmake-link-correct-python-lib.patch, which the Debian package builds with).
  replace "$src/cmake/Dependencies.cmake" 1 'set(version ${PYTHONLIBS_VERSION_STRING})' 'set(version ${python_version})'
  replace "$src/cmake/Dependencies.cmake" 2 'COMPONENTS "python-py${boost_py_version}"' 'COMPONENTS "python${boost_py_version}"'
  replace "$src/cmake/Dependencies.cmake" 2 '${Boost_PYTHON-PY${boost_py_version}_FOUND}' '${Boost_PYTHON${boost_py_version}_FOUND}'
  # 3. CUDA: math_functions.cu includes <math_functions.h>, an internal header that CUDA 12 keeps
  #    only as a deprecated shim; include the public <cuda_runtime.h> (BVLC/caffe PR #6681).
  replace "$src/src/caffe/util/math_functions.cu" 1 "#include <math_functions.h>" "#include <cuda_runtime.h>"
  # 4. NCCL under Python 3: caffe.NCCL.new_uid() built its bytes with PyBytes_FromString, which stops
  #    at the first NUL byte, so the 128-byte NCCL id reached train.py's GPU processes cut short and
  #    they could not form a communicator. Pass the length (BVLC/caffe PR #6661).
  replace "$src/python/caffe/_caffe.cpp" 1 \
    "PyBytes_FromString(uid.c_str())" "PyBytes_FromStringAndSize(uid.data(), uid.size())"
}

prepare() {  # DIR: the patched source tree at DIR, from CAFFE_SOURCE_DIR or the pinned tarball
  local dir="$1"
  if [ -n "${CAFFE_SOURCE_DIR:-}" ]; then
    [ -d "$CAFFE_SOURCE_DIR" ] || die "CAFFE_SOURCE_DIR=$CAFFE_SOURCE_DIR is not a directory"
    log "using the local Caffe source tree $CAFFE_SOURCE_DIR (in a copy)"
    cp -a "$CAFFE_SOURCE_DIR" "$dir"
  else
    fetch_tarball
    unpack_source "$TARBALL" "$dir"
  fi
  patch_tree "$dir"
}

# ---- configure and build ---------------------------------------------------------------------

python_library() {  # PYTHON: the interpreter's shared libpython (the caffe tool embeds it)
  "$1" - <<'PY'
import os, sysconfig
v = sysconfig.get_config_var
name = v("LDLIBRARY") or ""
dirs = [v("LIBDIR"), v("LIBPL"), os.path.join(v("LIBDIR") or "", v("MULTIARCH") or "")]
print(next((os.path.join(d, name) for d in dirs if d and name.endswith(".so") and os.path.isfile(os.path.join(d, name))), ""))
PY
}

cmake_flags() {  # cpu|cuda PYTHON PREFIX: one flag a line
  local device="$1" py="$2" prefix="$3" pyver lib inc
  case "$device" in cpu | cuda) ;; *) die "device must be cpu or cuda (got '$device')" ;; esac
  pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  inc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  lib="$(python_library "$py")"
  [ -n "$lib" ] || die "the interpreter $py has no shared libpython; pycaffe and the caffe tool need one"
  printf '%s\n' -DCMAKE_BUILD_TYPE=Release -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_LMDB=ON -DBLAS=Open \
    -DBUILD_docs=OFF -DBUILD_python=ON -DBUILD_python_layer=ON "-Dpython_version=$pyver" \
    "-DPYTHON_EXECUTABLE=$py" "-DPYTHON_LIBRARY=$lib" "-DPYTHON_INCLUDE_DIR=$inc" \
    "-DCMAKE_INSTALL_PREFIX=$prefix" -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON  # binaries find PREFIX/lib
  case "$device" in
    cpu) echo -DCPU_ONLY=ON ;;
    # cuDNN is off: Caffe's cuDNN layers call functions that cuDNN 8 removed.
    cuda) printf '%s\n' -DCPU_ONLY=OFF -DUSE_CUDNN=OFF -DUSE_NCCL=ON -DCUDA_ARCH_NAME=Manual \
            "-DCUDA_ARCH_BIN=$CUDA_ARCH_BIN" "-DCUDA_ARCH_PTX=$CUDA_ARCH_PTX" ;;
  esac
}

configure() {  # cpu|cuda PYTHON SOURCE BUILD PREFIX
  local device="$1" py="$2" src="$3" build="$4" prefix="$5" out flags
  out="$(cmake_flags "$device" "$py" "$prefix")" || exit 1  # cmake_flags said why
  mapfile -t flags <<< "$out"
  mkdir -p "$build"
  log "configuring ($device, cmake)"
  (cd "$build" && cmake "${flags[@]}" "$src" > "$build/cmake.log" 2>&1) \
    || { tail -40 "$build/cmake.log" >&2; die "cmake failed (log above)"; }
  # Caffe's CMake leaves out what it does not find instead of failing: check the two that matter
  if grep -q "Python interface is disabled" "$build/cmake.log"; then
    grep -i "python\|boost\|numpy" "$build/cmake.log" | tail -20 >&2
    die "CMake did not find Python, NumPy or Boost.Python for $py: pycaffe would be missing"
  fi
  if [ "$device" = cuda ] && ! grep -q 'set(Caffe_HAVE_CUDA TRUE)' "$build/CaffeConfig.cmake"; then
    die "CMake did not find CUDA: this would be a CPU-only Caffe"
  fi
}

lock() {  # KEY PREFIX: hold the build lock of KEY; while another build holds it, say so
  local lock="$CACHE_ROOT/caffe-$1.lock" waited=0 holder
  exec 9<> "$lock"
  if ! flock -n 9; then
    holder="$(head -c 200 "$lock" | tr '\n' ' ')"
    log "waiting for another set-up's Caffe build of the same recipe to finish (${holder:-holder not recorded})." \
        "It builds $2; the lock is $lock (released when that build ends, however it ends)."
    until flock -w "$LOCK_REPORT_S" 9; do
      waited=$((waited + LOCK_REPORT_S))
      log "still waiting for $lock after ${waited}s (${holder:-holder not recorded})"
    done
    log "the other build has ended; going on"
  fi
  printf 'held by pid %s on %s since %s\n' "$$" "${HOSTNAME:-unknown host}" "$(date -u +%FT%TZ)" > "$lock"
}

key() {  # PYTHON: hashes what decides the build's result, so messages and comments can change freely
  local py="$1"
  {
    echo "$CAFFE_SHA256 ${CAFFE_SOURCE_DIR:-tarball} $BUILD_TARGETS layout=bin,lib,python"
    declare -f unpack_source replace patch_tree python_library cmake_flags
    "$py" -c 'import sys, numpy; print(sys.version, numpy.__version__)'
  } | sha256sum | cut -c1-16
}

build() {  # PYTHON: the CPU build, cached
  local py="$1" k prefix work
  py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
  k="$(key "$py")"
  prefix="$CACHE_ROOT/caffe-$k"
  mkdir -p "$CACHE_ROOT"
  lock "$k" "$prefix"
  if [ -f "$prefix/.complete" ]; then
    log "reusing cached Caffe build $prefix"
    echo "$prefix"; return
  fi
  rm -rf "$prefix"
  work="$(mktemp -d "$CACHE_ROOT/work-$k.XXXXXX")"
  CLEANUP+=("$work")
  prepare "$work/src"
  configure cpu "$py" "$work/src" "$work/build" "$prefix"
  log "compiling libcaffe, pycaffe and the caffe tool with $JOBS jobs (about 10 minutes on 2 cores)"
  # shellcheck disable=SC2086  # BUILD_TARGETS is a list of words
  (cd "$work/build" && make -j"$JOBS" $BUILD_TARGETS > "$work/make.log" 2>&1) \
    || { tail -40 "$work/make.log" >&2; die "make failed (log above)"; }
  # the three targets only (make install would build every tool): bin/caffe, lib/libcaffe.so*, python/
  mkdir -p "$prefix/bin" "$prefix/lib" "$prefix/python"
  cp "$work/build/tools/caffe" "$prefix/bin/caffe"
  cp -a "$work/build/lib/"libcaffe.so* "$prefix/lib/"
  cp -rL "$work/src/python/caffe" "$work/src/python/train.py" "$prefix/python/"
  [ -f "$prefix/python/caffe/_caffe.so" ] && [ -f "$prefix/python/caffe/proto/caffe_pb2.py" ] \
    || die "the build did not produce pycaffe (python/caffe/_caffe.so and proto/caffe_pb2.py)"
  date -u +%FT%TZ > "$prefix/.complete"
  log "cached Caffe build at $prefix"
  echo "$prefix"
}

install() {  # cpu|cuda PYTHON PREFIX: every Caffe tool, libcaffe and pycaffe, installed into PREFIX
  local device="$1" py="$2" prefix="$3" work
  mkdir -p "$CACHE_ROOT"
  work="$(mktemp -d "$CACHE_ROOT/work-install.XXXXXX")"
  CLEANUP+=("$work")
  prepare "$work/src"
  configure "$device" "$py" "$work/src" "$work/build" "$prefix"
  log "compiling and installing Caffe ($device) into $prefix with $JOBS jobs"
  (cd "$work/build" && make -j"$JOBS" install > "$work/make.log" 2>&1) \
    || { tail -60 "$work/make.log" >&2; die "make install failed (log above)"; }
  if ! { [ -x "$prefix/bin/caffe" ] && [ -f "$prefix/python/train.py" ] && [ -f "$prefix/python/caffe/_caffe.so" ]; }; then
    die "the install is missing bin/caffe, python/train.py or pycaffe (python/caffe/_caffe.so)"
  fi
  log "installed Caffe ($device) into $prefix"
}

usage="usage: build_caffe.sh {build PYTHON | install cpu|cuda PYTHON PREFIX | prepare DIR | fetch |"
usage+=" flags cpu|cuda PYTHON PREFIX | key PYTHON | verify FILE SHA256 | patch SOURCE_DIR | packages | sources}"
case "${1:-}" in
  build)    [ $# -eq 2 ] || die "$usage"; build "$2" ;;
  install)  [ $# -eq 4 ] || die "$usage"; install "$2" "$3" "$4" ;;
  prepare)  [ $# -eq 2 ] || die "$usage"
            [ ! -e "$2" ] || [ -z "$(ls -A "$2")" ] || die "prepare: $2 exists and is not empty"
            mkdir -p "$CACHE_ROOT"; rmdir "$2" 2> /dev/null || true; prepare "$2" ;;
  fetch)    [ $# -eq 1 ] || die "$usage"; fetch_tarball; echo "$TARBALL" ;;
  flags)    [ $# -eq 4 ] || die "$usage"; cmake_flags "$2" "$3" "$4" ;;
  key)      [ $# -eq 2 ] || die "$usage"; key "$2" ;;
  verify)   [ $# -eq 3 ] || die "$usage"; verify "$2" "$3" ;;
  patch)    [ $# -eq 2 ] || die "$usage"; patch_tree "$2" ;;
  packages) [ $# -eq 1 ] || die "$usage"; printf '%s\n' "${PACKAGES[@]}" ;;
  sources)  [ $# -eq 1 ] || die "$usage"; echo "sha256 $CAFFE_SHA256"; read -ra tried <<< "$CAFFE_SOURCE"
            printf '%s\n' "${tried[@]}" ;;
  *) die "$usage" ;;
esac

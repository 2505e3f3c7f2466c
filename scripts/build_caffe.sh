#!/usr/bin/env bash
# Build BVLC Caffe (CPU only, pycaffe and the Python layer on) once, and cache it.
#
#   build_caffe.sh build PYTHON        build (or reuse) Caffe for this interpreter; prints its prefix
#   build_caffe.sh key PYTHON          print the cache key only
#   build_caffe.sh verify FILE SHA256  check a file's sha256, fail loudly on mismatch
#   build_caffe.sh patch SOURCE_DIR    apply the project's patches to a Caffe source tree
#
# Source: Debian's `caffe` source package from bullseye (BVLC Caffe plus Debian's patches),
# fetched through a private apt configuration: the system's apt sources are not touched.
# CAFFE_SOURCE_DIR=/path/to/caffe builds a local source tree instead (patched in a copy).
# The prefix (bin/caffe, lib/, python/caffe) lives under
# ${CAFFE_LAYERS_CACHE:-~/.cache/caffe-layers}/caffe-<key>, where the key hashes the source
# version, the patches, the CMake flags, the targets, the interpreter's version and numpy's
# version. A prefix is trusted only once its `.complete` stamp exists, and builds hold a lock.
set -euo pipefail

CAFFE_DEB_VERSION="1.0.0+git20180821.99bd997-8"
CAFFE_ORIG_TARBALL="caffe_1.0.0+git20180821.99bd997.orig.tar.gz"
CAFFE_ORIG_SHA256="e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c"
DEBIAN_MIRROR="${CAFFE_LAYERS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE_ROOT="${CAFFE_LAYERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caffe-layers}"
JOBS="${JOBS:-$(nproc)}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "build_caffe: $*" >&2; exit 1; }
log() { echo "build_caffe: $*" >&2; }

verify() {  # FILE SHA256
  local file="$1" want="$2" got
  [ -f "$file" ] || die "checksum: $file does not exist"
  got="$(sha256sum "$file" | cut -d' ' -f1)"
  [ "$got" = "$want" ] || die "checksum mismatch for $(basename "$file"): expected sha256 $want, got $got"
}

replace_once() {  # FILE OLD NEW: replace a literal line fragment, fail if it is not there
  local file="$1" old="$2" new="$3"
  grep -qF -- "$old" "$file" || die "patch: text to patch not found in $file: '$old' (has the Caffe source changed?)"
  OLD="$old" NEW="$new" perl -0pi -e 's/\Q$ENV{OLD}\E/$ENV{NEW}/g' "$file"
  grep -qF -- "$new" "$file" || die "patch: replacement did not land in $file"
}

patch_tree() {  # SOURCE_DIR
  local src="$1"
  [ -f "$src/src/caffe/util/io.cpp" ] || die "patch: $src is not a Caffe source tree (no src/caffe/util/io.cpp)"
  # protobuf >= 3.18: CodedInputStream::SetTotalBytesLimit takes one argument.
  replace_once "$src/src/caffe/util/io.cpp" \
    "SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)" \
    "SetTotalBytesLimit(kProtoReadBytesLimit)"
}

cmake_flags() {  # PYTHON PREFIX
  local py="$1" prefix="$2" libdir ldlib incdir pyver
  pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  libdir="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
  ldlib="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LDLIBRARY"))')"
  incdir="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  [ -f "$libdir/$ldlib" ] || die "the interpreter $py has no shared libpython ($libdir/$ldlib); pycaffe needs one"
  echo "-DCMAKE_BUILD_TYPE=Release -DCPU_ONLY=ON -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_LMDB=ON"
  echo "-DBLAS=Open -DBUILD_python=ON -DBUILD_python_layer=ON -DBUILD_docs=OFF -Dpython_version=$pyver"
  echo "-DPYTHON_EXECUTABLE=$py -DPYTHON_LIBRARY=$libdir/$ldlib -DPYTHON_INCLUDE_DIR=$incdir"
  # binaries carry the prefix's lib/ as their RPATH from the start, so they can be copied there
  echo "-DCMAKE_INSTALL_PREFIX=$prefix -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"
}

BUILD_TARGETS="caffe pycaffe caffe.bin"

key() {  # PYTHON: hashes what decides the build's result, so messages and comments can change freely
  local py="$1"
  {
    echo "$CAFFE_DEB_VERSION $CAFFE_ORIG_SHA256 ${CAFFE_SOURCE_DIR:-debian} $BUILD_TARGETS layout=bin,lib,python"
    declare -f replace_once patch_tree cmake_flags
    "$py" -c 'import sys, numpy; print(sys.version, numpy.__version__)'
  } | sha256sum | cut -c1-16
}

fetch_debian_source() {  # WORKDIR -> prints the extracted source dir
  local work="$1" apt="$1/apt"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$work/dl"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR bullseye main" > "$apt/sources.list"
  : > "$apt/status"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State=$apt" -o "Dir::State::Lists=$apt/lists" -o "Dir::State::status=$apt/status"
              -o "Dir::Cache=$apt" -o "Dir::Cache::archives=$apt/archives" -o APT::Sandbox::User=root)
  log "fetching Debian source package caffe=$CAFFE_DEB_VERSION (private apt configuration)"
  apt-get "${opts[@]}" -qq update >&2 || die "apt-get update (bullseye deb-src) failed"
  (cd "$work/dl" && apt-get "${opts[@]}" -qq source --download-only "caffe=$CAFFE_DEB_VERSION" >&2) \
    || die "apt-get source caffe=$CAFFE_DEB_VERSION failed"
  verify "$work/dl/$CAFFE_ORIG_TARBALL" "$CAFFE_ORIG_SHA256"
  (cd "$work/dl" && dpkg-source -x "caffe_${CAFFE_DEB_VERSION}.dsc" "$work/src" >&2) \
    || die "dpkg-source could not unpack the Caffe source package"
  echo "$work/src"
}

build() {  # PYTHON
  local py="$1" k prefix src
  py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
  k="$(key "$py")"
  prefix="$CACHE_ROOT/caffe-$k"
  mkdir -p "$CACHE_ROOT"
  exec 9>"$CACHE_ROOT/caffe-$k.lock"
  flock 9
  if [ -f "$prefix/.complete" ]; then
    log "reusing cached Caffe build $prefix"
    echo "$prefix"; return
  fi
  rm -rf "$prefix"
  work="$(mktemp -d "$CACHE_ROOT/work-$k.XXXXXX")"  # global: the EXIT trap removes it
  trap 'rm -rf "$work"' EXIT
  if [ -n "${CAFFE_SOURCE_DIR:-}" ]; then
    [ -d "$CAFFE_SOURCE_DIR" ] || die "CAFFE_SOURCE_DIR=$CAFFE_SOURCE_DIR is not a directory"
    log "building the local Caffe source tree $CAFFE_SOURCE_DIR (in a copy)"
    cp -a "$CAFFE_SOURCE_DIR" "$work/src"
    src="$work/src"
  else
    src="$(fetch_debian_source "$work")"
  fi
  patch_tree "$src"
  mkdir -p "$work/build"
  log "configuring (cmake)"
  # shellcheck disable=SC2046
  (cd "$work/build" && cmake $(cmake_flags "$py" "$prefix") "$src" > "$work/cmake.log" 2>&1) \
    || { tail -40 "$work/cmake.log" >&2; die "cmake failed (log above)"; }
  log "compiling libcaffe, pycaffe and the caffe tool with $JOBS jobs (several minutes on 2 cores)"
  (cd "$work/build" && make -j"$JOBS" $BUILD_TARGETS > "$work/make.log" 2>&1) \
    || { tail -40 "$work/make.log" >&2; die "make failed (log above)"; }
  # the three targets only (make install would build every tool): bin/caffe, lib/libcaffe.so*, python/
  mkdir -p "$prefix/bin" "$prefix/lib" "$prefix/python"
  cp "$work/build/tools/caffe" "$prefix/bin/caffe"
  cp -a "$work/build/lib/"libcaffe.so* "$prefix/lib/"
  cp -rL "$src/python/caffe" "$src/python/train.py" "$prefix/python/"
  [ -f "$prefix/python/caffe/_caffe.so" ] && [ -f "$prefix/python/caffe/proto/caffe_pb2.py" ] \
    || die "the build did not produce pycaffe (python/caffe/_caffe.so and proto/caffe_pb2.py)"
  date -u +%FT%TZ > "$prefix/.complete"
  log "cached Caffe build at $prefix"
  echo "$prefix"
}

case "${1:-}" in
  build)  [ $# -eq 2 ] || die "usage: build_caffe.sh build PYTHON"; build "$2" ;;
  key)    [ $# -eq 2 ] || die "usage: build_caffe.sh key PYTHON"; key "$2" ;;
  verify) [ $# -eq 3 ] || die "usage: build_caffe.sh verify FILE SHA256"; verify "$2" "$3" ;;
  patch)  [ $# -eq 2 ] || die "usage: build_caffe.sh patch SOURCE_DIR"; patch_tree "$2" ;;
  *) die "usage: build_caffe.sh {build PYTHON|key PYTHON|verify FILE SHA256|patch SOURCE_DIR}" ;;
esac

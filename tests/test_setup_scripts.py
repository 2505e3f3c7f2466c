"""scripts/build_caffe.sh: where the Caffe source comes from, its checksum, the patches, the
CMake flags, the cache's trust rule and its lock. Nothing here compiles Caffe.

The fetch tests make the apt route fail the way it will once Debian's mirrors drop bullseye
(an `apt-get` on PATH that finds no source package) and serve the fallback from a file:// URL.
"""
import hashlib
import io
import os
import queue
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT

BUILD = ROOT / "scripts" / "build_caffe.sh"
PINNED_SHA256 = "e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c"
PINNED_SHA1 = "4061e9b6915b7507ff30f83c1d1b74346fe026e2"
DEB_VERSION = "1.0.0+git20180821.99bd997-8"

# The lines the patches touch, as BVLC commit 99bd997 has them ...
IO_CPP = "  coded_input->SetTotalBytesLimit(kProtoReadBytesLimit, 536870912);\n"
DEPENDENCIES_CMAKE = """\
    set(version ${PYTHONLIBS_VERSION_STRING})

    STRING( REGEX REPLACE "[^0-9]" "" boost_py_version ${version} )
    find_package(Boost 1.46 COMPONENTS "python-py${boost_py_version}")
    set(Boost_PYTHON_FOUND ${Boost_PYTHON-PY${boost_py_version}_FOUND})

    while(NOT "${version}" STREQUAL "" AND NOT Boost_PYTHON_FOUND)
      find_package(Boost 1.46 COMPONENTS "python-py${boost_py_version}")
      set(Boost_PYTHON_FOUND ${Boost_PYTHON-PY${boost_py_version}_FOUND})
    endwhile()
"""
MATH_FUNCTIONS_CU = "#include <math_functions.h>  // CUDA's, not caffe's, for fabs, signbit\n"
CAFFE_CPP = "  PyObject* py_uid = PyBytes_FromString(uid.c_str());\n"
# ... and as they must read after patching (written out by hand, not by the script)
PATCHED = {
    "src/caffe/util/io.cpp": "  coded_input->SetTotalBytesLimit(kProtoReadBytesLimit);\n",
    "cmake/Dependencies.cmake": """\
    set(version ${python_version})

    STRING( REGEX REPLACE "[^0-9]" "" boost_py_version ${version} )
    find_package(Boost 1.46 COMPONENTS "python${boost_py_version}")
    set(Boost_PYTHON_FOUND ${Boost_PYTHON${boost_py_version}_FOUND})

    while(NOT "${version}" STREQUAL "" AND NOT Boost_PYTHON_FOUND)
      find_package(Boost 1.46 COMPONENTS "python${boost_py_version}")
      set(Boost_PYTHON_FOUND ${Boost_PYTHON${boost_py_version}_FOUND})
    endwhile()
""",
    "src/caffe/util/math_functions.cu": "#include <cuda_runtime.h>  // CUDA's, not caffe's, for fabs, signbit\n",
    "python/caffe/_caffe.cpp": "  PyObject* py_uid = PyBytes_FromStringAndSize(uid.data(), uid.size());\n",
}


def run(*args, timeout=120, **env):
    return subprocess.run(["bash", str(BUILD), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **{k: str(v) for k, v in env.items()}}, timeout=timeout)


def fake_files(io_cpp=IO_CPP):
    """A stand-in Caffe source: the files the patches touch, and a CMakeLists.txt that is not CMake."""
    return {
        "src/caffe/util/io.cpp": "// io\n" + io_cpp,
        "cmake/Dependencies.cmake": DEPENDENCIES_CMAKE,
        "src/caffe/util/math_functions.cu": MATH_FUNCTIONS_CU,
        "python/caffe/_caffe.cpp": CAFFE_CPP,
        "CMakeLists.txt": "this is not cmake\n",
    }


def fake_caffe_tree(root, **kwargs):
    for name, text in fake_files(**kwargs).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def fake_tarball(path, top=""):
    """A .tar.gz of the stand-in source; top="" has no top-level folder, as Debian's orig tarball."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in fake_files().items():
            data = text.encode()
            info = tarfile.TarInfo(top + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def failing_apt(tmp_path):
    """A PATH folder whose apt-get updates fine but finds no caffe source package, as Debian's
    mirrors will once bullseye is gone; it logs its calls. Plus a keyring file, so the apt
    route is tried on any machine."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "apt-get").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{tmp_path}/apt-get.calls"\n'
        'case " $* " in *" source "*)\n'
        f'  echo "E: Can not find version \'{DEB_VERSION}\' of package \'caffe\'" >&2; exit 100;;\n'
        "esac\n")
    (shim / "apt-get").chmod(0o755)
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    return {"PATH": f"{shim}:{os.environ['PATH']}", "CAFFE_LAYERS_DEBIAN_KEYRING": keyring}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(cache):
    """Temporary files or folders a run left in the cache."""
    return sorted(p.name for p in cache.rglob("*") if p.name.startswith((".download", ".apt", "work-")))


# ---- checksum -------------------------------------------------------------------------------

def test_verify_accepts_the_right_checksum_and_rejects_a_wrong_one(tmp_path):
    tarball = tmp_path / "caffe.orig.tar.gz"
    tarball.write_bytes(b"not really caffe")
    right = hashlib.sha256(b"not really caffe").hexdigest()
    assert run("verify", tarball, right).returncode == 0
    wrong = run("verify", tarball, "0" * 64)
    assert wrong.returncode != 0
    assert f"checksum mismatch for caffe.orig.tar.gz: expected sha256 {'0' * 64}, got {right}" in wrong.stderr


def test_the_pins_name_debians_tarball_and_its_durable_address():
    """The checksum and the sources tried, in order, as the recipe reports them; the sha1 in the
    snapshot.debian.org address is checked against the real tarball below."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAFFE_SOURCE", "CAFFE_SHA256")}
    done = subprocess.run(["bash", str(BUILD), "sources"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"sha256 {PINNED_SHA256}"
    assert lines[1] == "apt"
    assert lines[2] == f"https://snapshot.debian.org/file/{PINNED_SHA1}"
    assert re.fullmatch(r"https://snapshot\.debian\.org/archive/debian/\d{8}T\d{6}Z/pool/main/c/caffe/"
                        r"caffe_1\.0\.0\+git20180821\.99bd997\.orig\.tar\.gz", lines[3])


# ---- fetch: the apt route, the fallback, the checksum -----------------------------------------

@pytest.mark.parametrize("top", ["", "caffe-99bd997/"], ids=["debian-orig-layout", "github-archive-layout"])
def test_when_apt_finds_no_source_package_the_url_is_used(tmp_path, top):
    tarball = fake_tarball(tmp_path / "mirror.tar.gz", top=top)
    cache, tree = tmp_path / "cache", tmp_path / "src"
    result = run("prepare", tree, **failing_apt(tmp_path), CAFFE_LAYERS_CACHE=cache,
                 CAFFE_SOURCE=f"apt file://{tarball}", CAFFE_SHA256=sha256(tarball))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "apt-get.calls").read_text()
    assert f"source --download-only caffe={DEB_VERSION}" in calls
    assert f"no longer has the source package caffe={DEB_VERSION}" in result.stderr
    assert f"downloading file://{tarball}" in result.stderr
    for name, text in PATCHED.items():
        assert text in (tree / name).read_text(), name
    assert (tree / "CMakeLists.txt").read_text() == "this is not cmake\n"  # unwrapped from any top folder
    kept = cache / "sources" / f"caffe-{sha256(tarball)}.tar.gz"
    assert kept.read_bytes() == tarball.read_bytes()
    assert leftovers(cache) == []


def test_a_wrong_checksum_stops_before_anything_is_unpacked_or_kept(tmp_path):
    tarball = fake_tarball(tmp_path / "mirror.tar.gz")
    before = tarball.read_bytes()
    cache, tree = tmp_path / "cache", tmp_path / "src"
    result = run("prepare", tree, **failing_apt(tmp_path), CAFFE_LAYERS_CACHE=cache,
                 CAFFE_SOURCE=f"apt file://{tarball} file://{tmp_path}/second.tar.gz")  # the pinned sha256
    assert result.returncode != 0
    assert (f"checksum mismatch for the Caffe source from file://{tarball}: "
            f"expected sha256 {PINNED_SHA256}, got {sha256(tarball)}") in result.stderr
    assert "second.tar.gz" not in result.stderr  # a mismatch stops; it is not a reason to try elsewhere
    assert not tree.exists()
    assert list((cache / "sources").iterdir()) == []
    assert tarball.read_bytes() == before


def test_when_every_source_fails_the_message_says_what_to_do(tmp_path):
    cache = tmp_path / "cache"
    result = run("prepare", tmp_path / "src", **failing_apt(tmp_path), CAFFE_LAYERS_CACHE=cache,
                 CAFFE_SOURCE=f"apt file://{tmp_path}/missing.tar.gz")
    assert result.returncode != 0
    assert f"could not fetch the Caffe source from any of: apt file://{tmp_path}/missing.tar.gz" in result.stderr
    assert f"put that file at {cache}/sources/caffe-{PINNED_SHA256}.tar.gz" in result.stderr
    assert leftovers(cache) == []


def test_the_verified_tarball_is_reused_and_a_corrupted_one_is_not(tmp_path):
    tarball = fake_tarball(tmp_path / "mirror.tar.gz")
    env = dict(CAFFE_LAYERS_CACHE=tmp_path / "cache", CAFFE_SHA256=sha256(tarball))
    assert run("prepare", tmp_path / "a", CAFFE_SOURCE=f"file://{tarball}", **env).returncode == 0
    unreachable = f"file://{tmp_path}/gone.tar.gz"
    again = run("prepare", tmp_path / "b", CAFFE_SOURCE=unreachable, **env)
    assert again.returncode == 0, again.stderr
    assert "using the verified Caffe source" in again.stderr and "downloading" not in again.stderr
    kept = tmp_path / "cache" / "sources" / f"caffe-{sha256(tarball)}.tar.gz"
    kept.write_bytes(kept.read_bytes()[:-1] + b"x")  # the cached copy goes bad
    corrupted = run("prepare", tmp_path / "c", CAFFE_SOURCE=unreachable, **env)
    assert corrupted.returncode != 0 and "could not fetch the Caffe source" in corrupted.stderr


def test_the_pinned_tarball_is_the_snapshot_file_and_takes_every_patch(tmp_path):
    """The real source: fetched as set-up fetches it (the copy set-up keeps in the cache when
    there is one), checked against the pins by hashlib, unpacked and patched."""
    fetched = run("fetch", timeout=600)
    assert fetched.returncode == 0, fetched.stderr
    tarball = Path(fetched.stdout.strip())
    assert sha256(tarball) == PINNED_SHA256
    assert hashlib.sha1(tarball.read_bytes()).hexdigest() == PINNED_SHA1  # snapshot.debian.org/file/<sha1>
    tree = tmp_path / "src"
    result = run("prepare", tree, CAFFE_SOURCE=f"file://{tarball}", CAFFE_LAYERS_CACHE=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert (tree / "CMakeLists.txt").is_file() and (tree / "python" / "train.py").is_file()
    expected = {name: [line for line in text.splitlines() if line.strip()] for name, text in PATCHED.items()}
    expected["cmake/Dependencies.cmake"] = [  # the lines the patch changes; the real file has more between
        line for line in expected["cmake/Dependencies.cmake"] if "python" in line or "PYTHON" in line]
    for name, lines in expected.items():
        text = (tree / name).read_text()
        for line in lines:
            assert line in text, f"{name}: {line.strip()!r} missing after patching"


# ---- patches --------------------------------------------------------------------------------

def test_patch_rewrites_every_patched_line(tmp_path):
    tree = fake_caffe_tree(tmp_path / "caffe")
    result = run("patch", tree)
    assert result.returncode == 0, result.stderr
    for name, text in PATCHED.items():
        assert text in (tree / name).read_text(), name


def test_patch_fails_loudly_when_the_text_is_gone(tmp_path):
    tree = fake_caffe_tree(tmp_path / "caffe", io_cpp="  coded_input->SetTotalBytesLimit(kLimit);\n")
    result = run("patch", tree)
    assert result.returncode != 0
    assert "patch: text to patch not found 1 time(s)" in result.stderr and "(found 0)" in result.stderr
    assert "SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)" in result.stderr


def test_patch_fails_when_the_text_appears_more_often_than_expected(tmp_path):
    tree = fake_caffe_tree(tmp_path / "caffe", io_cpp=IO_CPP * 2)
    result = run("patch", tree)
    assert result.returncode != 0 and "(found 2)" in result.stderr, result.stderr


def test_patch_rejects_a_tree_that_is_not_caffe(tmp_path):
    result = run("patch", tmp_path)
    assert result.returncode != 0 and "is not a Caffe source tree" in result.stderr


# ---- CMake flags ----------------------------------------------------------------------------

def flags(device, prefix="/opt/caffe"):
    result = run("flags", device, sys.executable, prefix)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_one_set_of_cmake_flags_with_the_device_part_apart():
    cpu, cuda = flags("cpu"), flags("cuda")
    shared = [f for f in cpu if f in cuda]
    assert set(cpu) - set(shared) == {"-DCPU_ONLY=ON"}
    assert set(cuda) - set(shared) == {"-DCPU_ONLY=OFF", "-DUSE_CUDNN=OFF", "-DUSE_NCCL=ON", "-DCUDA_ARCH_NAME=Manual",
                                       "-DCUDA_ARCH_BIN=70 75 80 86 89 90", "-DCUDA_ARCH_PTX=90"}
    version = "%d.%d" % sys.version_info[:2]
    for flag in ["-DBUILD_python=ON", "-DBUILD_python_layer=ON", "-DUSE_OPENCV=OFF", "-DUSE_LEVELDB=OFF",
                 f"-Dpython_version={version}", f"-DPYTHON_EXECUTABLE={sys.executable}",
                 "-DCMAKE_INSTALL_PREFIX=/opt/caffe"]:
        assert flag in shared, flag
    library = next(f.split("=", 1)[1] for f in shared if f.startswith("-DPYTHON_LIBRARY="))
    assert Path(library).is_file() and Path(library).name.startswith(f"libpython{version}")


def test_cuda_architectures_can_be_overridden_and_a_bad_device_is_refused():
    result = run("flags", "cuda", sys.executable, "/opt/caffe", CUDA_ARCH_BIN="80 90", CUDA_ARCH_PTX="")
    assert "-DCUDA_ARCH_BIN=80 90" in result.stdout.splitlines()
    bad = run("flags", "rocm", sys.executable, "/opt/caffe")
    assert bad.returncode != 0 and "device must be cpu or cuda (got 'rocm')" in bad.stderr


# ---- the cache ------------------------------------------------------------------------------

def test_a_failed_build_leaves_nothing_a_later_run_trusts(tmp_path):
    cache = tmp_path / "cache"
    source = fake_caffe_tree(tmp_path / "caffe")
    key = run("key", sys.executable, CAFFE_SOURCE_DIR=source).stdout.strip()
    stale = cache / f"caffe-{key}"
    (stale / "bin").mkdir(parents=True)  # an interrupted earlier build: no .complete stamp
    result = run("build", sys.executable, CAFFE_SOURCE_DIR=source, CAFFE_LAYERS_CACHE=cache)
    assert result.returncode != 0 and "cmake failed" in result.stderr
    assert not stale.exists()
    assert leftovers(cache) == []


def test_the_cache_key_follows_what_is_built_not_where_it_came_from(tmp_path):
    pinned = run("key", sys.executable).stdout.strip()
    assert len(pinned) == 16
    assert run("key", sys.executable, CAFFE_SOURCE="https://mirror.example/caffe.tar.gz").stdout.strip() == pinned
    assert run("key", sys.executable, CAFFE_SHA256="0" * 64).stdout.strip() != pinned
    assert run("key", sys.executable, CAFFE_SOURCE_DIR=tmp_path).stdout.strip() != pinned


# ---- the lock: a set-up that waits says so --------------------------------------------------

HOLDER = """
import fcntl, os, sys
with open(sys.argv[1], "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.truncate(0)
    lock.write("held by pid %d on test-host since 2030-01-01T00:00:00Z\\n" % os.getpid())
    lock.flush()
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes stdin
"""


def lines_of(stream):
    """A queue that receives the lines of a text stream, read on a thread."""
    lines = queue.Queue()

    def pump():
        for line in stream:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for(lines, text, seen, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} not printed; got:\n{''.join(seen)}")


def test_a_build_waiting_for_another_says_what_it_waits_for_and_where_the_lock_is(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ, CAFFE_SOURCE_DIR=str(fake_caffe_tree(tmp_path / "caffe")),
               CAFFE_LAYERS_CACHE=str(cache), CAFFE_LAYERS_LOCK_REPORT_S="1")
    key = run("key", sys.executable, CAFFE_SOURCE_DIR=env["CAFFE_SOURCE_DIR"]).stdout.strip()
    lock, prefix = cache / f"caffe-{key}.lock", cache / f"caffe-{key}"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        waiter = subprocess.Popen(["bash", str(BUILD), "build", sys.executable], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines, seen = lines_of(waiter.stderr), []
        first = wait_for(lines, "waiting for another set-up's Caffe build", seen)
        assert f"held by pid {holder.pid} on test-host" in first
        assert f"It builds {prefix}; the lock is {lock}" in first
        assert "after 1s" in wait_for(lines, "still waiting for", seen)  # and it keeps saying so
        assert waiter.poll() is None
        # the other build completes: the waiting one must take its result, not build again
        (prefix / "bin").mkdir(parents=True)
        (prefix / ".complete").write_text("2030-01-01T00:00:00Z\n")
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        wait_for(lines, "the other build has ended", seen)
        wait_for(lines, f"reusing cached Caffe build {prefix}", seen)
        assert waiter.wait(timeout=30) == 0
        assert waiter.stdout.read().strip() == str(prefix)
    finally:
        for process in (holder, waiter):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_a_build_that_does_not_wait_prints_no_waiting_line(tmp_path):
    source = fake_caffe_tree(tmp_path / "caffe")
    result = run("build", sys.executable, CAFFE_SOURCE_DIR=source, CAFFE_LAYERS_CACHE=tmp_path / "cache")
    assert "cmake failed" in result.stderr and "waiting" not in result.stderr

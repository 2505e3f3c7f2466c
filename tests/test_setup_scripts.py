"""scripts/build_caffe.sh: the checksum and patch guards, and the cache's trust rule."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "scripts" / "build_caffe.sh"
IO_CPP_LINE = "  coded_input->SetTotalBytesLimit(kProtoReadBytesLimit, 536870912);\n"


def run(*args, **env):
    return subprocess.run(["bash", str(BUILD), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def fake_caffe_tree(root, io_cpp=IO_CPP_LINE):
    (root / "src" / "caffe" / "util").mkdir(parents=True)
    (root / "src" / "caffe" / "util" / "io.cpp").write_text("// io\n" + io_cpp)
    (root / "CMakeLists.txt").write_text("this is not cmake\n")
    return root


def test_verify_accepts_the_right_checksum_and_rejects_a_wrong_one(tmp_path):
    tarball = tmp_path / "caffe.orig.tar.gz"
    tarball.write_bytes(b"not really caffe")
    right = hashlib.sha256(b"not really caffe").hexdigest()
    assert run("verify", tarball, right).returncode == 0
    wrong = run("verify", tarball, "0" * 64)
    assert wrong.returncode != 0
    assert f"checksum mismatch for caffe.orig.tar.gz: expected sha256 {'0' * 64}, got {right}" in wrong.stderr


def test_the_pinned_checksum_is_the_one_verified():
    text = BUILD.read_text()
    assert 'CAFFE_ORIG_SHA256="e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c"' in text
    assert 'verify "$work/dl/$CAFFE_ORIG_TARBALL" "$CAFFE_ORIG_SHA256"' in text


def test_patch_rewrites_the_protobuf_call(tmp_path):
    tree = fake_caffe_tree(tmp_path / "caffe")
    result = run("patch", tree)
    assert result.returncode == 0, result.stderr
    assert "SetTotalBytesLimit(kProtoReadBytesLimit);" in (tree / "src/caffe/util/io.cpp").read_text()


def test_patch_fails_loudly_when_the_text_is_gone(tmp_path):
    tree = fake_caffe_tree(tmp_path / "caffe", io_cpp="  coded_input->SetTotalBytesLimit(kLimit);\n")
    result = run("patch", tree)
    assert result.returncode != 0
    assert "patch: text to patch not found" in result.stderr
    assert "SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)" in result.stderr


def test_patch_rejects_a_tree_that_is_not_caffe(tmp_path):
    result = run("patch", tmp_path)
    assert result.returncode != 0 and "is not a Caffe source tree" in result.stderr


def test_a_failed_build_leaves_nothing_a_later_run_trusts(tmp_path):
    cache = tmp_path / "cache"
    source = fake_caffe_tree(tmp_path / "caffe")
    key = run("key", sys.executable, CAFFE_SOURCE_DIR=source).stdout.strip()
    stale = cache / f"caffe-{key}"
    (stale / "bin").mkdir(parents=True)  # an interrupted earlier build: no .complete stamp
    result = run("build", sys.executable, CAFFE_SOURCE_DIR=source, CAFFE_LAYERS_CACHE=cache)
    assert result.returncode != 0 and "cmake failed" in result.stderr
    assert not stale.exists()
    assert not list(cache.glob("work-*"))  # the work tree is removed


def test_the_cache_key_follows_the_recipe(tmp_path):
    debian = run("key", sys.executable).stdout.strip()
    local = run("key", sys.executable, CAFFE_SOURCE_DIR=tmp_path).stdout.strip()
    assert len(debian) == 16 and debian != local

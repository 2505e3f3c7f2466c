"""Every source file compiles under the oldest Python the package claims.

setup.cfg's python_requires names it (3.10: the CUDA image's Ubuntu 22.04 Python). CI runs the
suite on a newer Python, where syntax such as `a[x, *rest]` (3.11+) passes unnoticed; this
compiles every file with the oldest one, which needs no second Caffe build. The interpreter is
found as: this one if it is that version, $CAFFE_LAYERS_OLDEST_PYTHON, pythonX.Y on PATH, or
pyenv's ~/.pyenv/versions/X.Y.*. When there is none the test fails and says how to get one.
"""
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SOURCE_DIRS = ["caffe_layers", "tests", "examples", "benchmarks", "docker", "scripts", "experiments", "mutants"]

# Run by the old interpreter: compile each file given, print "path:line: message" for each failure.
COMPILE = """
import sys

bad = []
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        source = handle.read()
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as error:
        bad.append("%s:%s: %s" % (path, error.lineno, error.msg))
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def oldest_claimed():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requires = config["options"]["python_requires"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires.strip())
    assert match, f"setup.cfg: python_requires = {requires!r}; expected the form '>=X.Y'"
    return int(match.group(1)), int(match.group(2))


def version_of(python):
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(major, minor):
    wanted = f"{major}.{minor}"
    if sys.version_info[:2] == (major, minor):
        return sys.executable, []
    candidates = [os.environ.get("CAFFE_LAYERS_OLDEST_PYTHON"), shutil.which(f"python{wanted}")]
    candidates += sorted(map(str, (Path.home() / ".pyenv" / "versions").glob(f"{wanted}.*/bin/python{wanted}")),
                         reverse=True)
    tried = []
    for candidate in filter(None, candidates):
        got = version_of(candidate)
        if got == wanted:
            return candidate, tried
        tried.append(f"{candidate} ({got or 'does not run'})")
    return None, tried


@pytest.fixture(scope="module")
def oldest_python():
    major, minor = oldest_claimed()
    python, tried = find_python(major, minor)
    if python is None:
        pytest.fail(f"no Python {major}.{minor} interpreter found (tried: {', '.join(tried) or 'none on PATH or in pyenv'}); "
                    f"setup.cfg claims python_requires >={major}.{minor}, so CI must compile with it: install one with "
                    f"`pyenv install {major}.{minor}` (or `apt-get install python{major}.{minor}` on Ubuntu 22.04), "
                    f"or set CAFFE_LAYERS_OLDEST_PYTHON=/path/to/python{major}.{minor}")
    return python


def source_files():
    files = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if path.suffix == ".py":
                files.append(path)
            elif path.suffix == "":  # an executable script without extension, if it is Python
                with open(path, "rb") as handle:
                    first = handle.readline()
                if first.startswith(b"#!") and b"python" in first:
                    files.append(path)
    return files


def compile_with(python, files):
    return subprocess.run([python, "-c", COMPILE, *map(str, files)], capture_output=True, text=True, timeout=300)


def test_python_requires_and_classifiers_state_the_tested_versions():
    assert oldest_claimed() == (3, 10), "the CUDA image runs Ubuntu 22.04's Python 3.10"
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    classifiers = config["metadata"]["classifiers"].split("\n")
    for version in ("3.10", "3.11"):  # the image's and CI's
        assert f"Programming Language :: Python :: {version}" in classifiers


def test_every_source_file_compiles_with_the_oldest_claimed_python(oldest_python):
    files = source_files()
    names = {path.relative_to(ROOT).parts[0] for path in files}
    assert {"caffe_layers", "tests", "examples", "benchmarks", "docker"} <= names, names  # the walk finds them
    result = compile_with(oldest_python, files)
    assert result.returncode == 0, (f"these files do not compile with {oldest_python} "
                                    f"(python_requires {'.'.join(map(str, oldest_claimed()))}):\n"
                                    + result.stdout + result.stderr)


def test_the_check_catches_syntax_newer_than_the_oldest_python(oldest_python, tmp_path):
    newer = tmp_path / "newer.py"
    newer.write_text("a, x, rest = {}, 1, [2]\nb = a[x, *rest]  # 3.11+: star expression in a subscript\n")
    result = compile_with(oldest_python, [newer])
    assert result.returncode == 1 and f"{newer}:2:" in result.stdout, result.stdout + result.stderr

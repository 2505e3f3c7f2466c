"""The mutation check's list (mutants/mutants.py) still applies to today's code: every mutant's
``old`` text occurs exactly once in its file, its tests exist, and every module with logic has
mutants. ``make mutants`` (scripts/mutants.py) runs them; this only keeps the list from rotting."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LISTING = _load(ROOT / "mutants" / "mutants.py", "caffe_layers_mutants_list")
MUTANTS = LISTING.MUTANTS

# every module with logic, and the least number of mutants it must have
LOGIC_MODULES = ["focal.py", "multilabel_softmax.py", "asymmetric.py", "blocks.py", "params.py", "config.py",
                 "layers.py", "metrics_layer.py", "netspec.py", "metrics.py", "decoding.py", "class_weights.py",
                 "cli.py", "net.py", "data.py"]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_applies_once_and_changes_its_file(mutant):
    text = (ROOT / mutant.file).read_text()
    assert text.count(mutant.old) == 1, (
        f"{mutant.name}: its old text occurs {text.count(mutant.old)} times in {mutant.file}; rewrite the "
        f"mutant for today's code (same bug) in mutants/mutants.py")
    mutated = LISTING.apply(mutant, text)
    assert mutated != text and mutated.count(mutant.new) >= 1
    assert mutant.bug and "\n" not in mutant.bug
    for test in mutant.tests:
        file, _, function = test.partition("::")
        assert (ROOT / file).is_file(), f"{mutant.name}: test file {file} does not exist"
        assert not function or f"def {function}(" in (ROOT / file).read_text(), f"{mutant.name}: no test {test}"


def test_names_are_unique_and_there_are_at_least_forty():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
    assert len(MUTANTS) >= 40


def test_every_module_with_logic_has_mutants():
    covered = {Path(m.file).name for m in MUTANTS}
    missing = [name for name in LOGIC_MODULES if name not in covered]
    assert not missing, f"modules without mutants in mutants/mutants.py: {missing}"


def test_problems_reports_a_snippet_that_no_longer_occurs(tmp_path):
    # the runner refuses to start on a stale list: problems() must name the mutant and its file
    mutant = MUTANTS[0]
    (tmp_path / Path(mutant.file).parent).mkdir(parents=True)
    (tmp_path / mutant.file).write_text("# the code was rewritten\n")
    for test in mutant.tests:
        (tmp_path / test).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / test).write_text("")
    found = [line for line in LISTING.problems(tmp_path) if line.startswith(f"{mutant.name}:")]
    assert found == [f"{mutant.name}: its old text occurs 0 times in {mutant.file} (it must occur once): "
                     f"{mutant.old.strip().splitlines()[0][:80]!r}"]


def test_the_runner_lists_the_mutants():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "mutants.py"), "--list"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{len(MUTANTS)} mutants"
    for mutant in MUTANTS:
        assert mutant.name in result.stdout

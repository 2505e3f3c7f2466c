#!/usr/bin/env python3
"""``make mutants``: apply each curated mutant to a scratch copy and check that the tests catch it.

A mutant (``mutants/mutants.py``) is a small realistic bug: one exact snippet of one file
replaced by another. For each one this script writes the mutated file into a scratch copy of
the checkout, runs the mutant's own test files there (``pytest -x -q``, with a time limit) and
records whether a test failed (killed) or every test passed (SURVIVED). It ends with a table
and the kill rate, and exits with status 1 if any mutant was not killed. The checkout itself
is never written.

The scratch copy holds every file git tracks or would track (``git ls-files --cached --others
--exclude-standard``) and a thin ``.venv`` beside it: the project's interpreter and packages,
but a ``bin/caffe`` wrapper and console scripts that load the scratch copy's ``caffe_layers``,
so the tests that run the ``caffe`` tool or the ``caffe-layers`` command in a subprocess test
the mutant too. Before any mutant runs, a canary (a ``caffe_layers`` that fails to import)
proves that Python, the ``caffe`` tool and the ``caffe-layers`` command all load the scratch
copy; then the tests are run once unmutated (the baseline), since a test that already fails
would "kill" every mutant.

    make mutants                                    # every mutant (10-30 minutes on 2 cores)
    .venv/bin/python scripts/mutants.py --list      # the list
    .venv/bin/python scripts/mutants.py --only focal-log1p-rounding --only blocks-flat-last-piece
    .venv/bin/python scripts/mutants.py --markdown mutants.md   # also write the table to a file
"""
import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from caffe_layers.files import write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "mutants" / "mutants.py"
CANARY = "caffe-layers mutants: the scratch copy's canary"
DEFAULT_TIMEOUT = 600


def load_list(path=LIST):
    """The module ``mutants/mutants.py`` (``MUTANTS``, ``problems``, ``apply``)."""
    spec = importlib.util.spec_from_file_location("caffe_layers_mutants_list", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the scratch copy

def checkout_files(root):
    """Paths (relative) of every file git tracks or would track in ``root``'s working tree."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    return sorted({p for p in out.decode().split("\0") if p and (root / p).is_file()})


def copy_checkout(root, scratch):
    for rel in checkout_files(root):
        target = scratch / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def shadow_venv(venv, scratch):
    """``scratch/.venv``: the interpreter and site-packages of ``venv`` (links), with every script
    that names the checkout (the ``caffe`` wrapper's PYTHONPATH, console-script shebangs)
    rewritten to name the scratch copy instead."""
    shadow = scratch / ".venv"
    (shadow / "bin").mkdir(parents=True)
    for entry in venv.iterdir():
        if entry.name != "bin":
            os.symlink(entry.resolve() if entry.is_symlink() else entry, shadow / entry.name)
    for entry in (venv / "bin").iterdir():
        target = shadow / "bin" / entry.name
        if entry.is_symlink():
            # python -> python3 -> the base interpreter: the same links, so that sys.executable
            # is scratch/.venv/bin/python and pyvenv.cfg beside it makes it this venv
            os.symlink(os.readlink(entry), target)
            continue
        try:
            text = entry.read_text()
        except (UnicodeDecodeError, OSError):
            text = None
        if text is None or str(ROOT) not in text:
            os.symlink(entry, target)
            continue
        target.write_text(text.replace(str(ROOT), str(scratch)))
        target.chmod(entry.stat().st_mode)
    return shadow / "bin" / "python"


def scratch_env(scratch):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(scratch) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant of the same size and second must not reuse a stale .pyc
    env.pop("CI", None)                   # a skipped test is not a kill
    env.pop("GLOG_minloglevel", None)     # tests read the caffe tool's log at its default level
    return env


def check_isolation(scratch, python, env):
    """Raise RuntimeError unless Python, the caffe tool and the caffe-layers command load the
    scratch copy's caffe_layers: with a canary that makes it fail to import, each must fail."""
    init = scratch / "caffe_layers" / "__init__.py"
    original = init.read_text()
    init.write_text(original + f"\nraise ImportError({CANARY!r})\n")
    bin_dir = python.parent
    checks = [("python", [str(python), "-c", "import caffe_layers"])]
    if (bin_dir / "caffe").exists():
        checks.append(("the caffe tool", [str(bin_dir / "caffe"), "time", "-model",
                                          str(scratch / "scripts" / "smoke.prototxt"), "-iterations", "1"]))
    if (bin_dir / "caffe-layers").exists():
        checks.append(("the caffe-layers command", [str(bin_dir / "caffe-layers"), "evaluate", "--help"]))
    try:
        for what, argv in checks:
            result = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
            if CANARY not in result.stdout + result.stderr:
                raise RuntimeError(f"{what} does not load the scratch copy's caffe_layers ({scratch}): with a "
                                   f"canary that breaks its import, {' '.join(argv[:2])} exited {result.returncode} "
                                   f"without it; mutants would be tested against the checkout instead")
    finally:
        init.write_text(original)


# ---------------------------------------------------------------- running tests

def run_pytest(python, scratch, env, test_files, timeout):
    """(return code or None on timeout, seconds, output) of ``pytest -x -q test_files`` in ``scratch``."""
    argv = [str(python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *test_files]
    start = time.monotonic()
    process = subprocess.Popen(argv, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # pytest and the caffe tools it started
        output, _ = process.communicate()
        code = None
    return code, time.monotonic() - start, output


def first_failure(output):
    """The first test pytest reports as failed or in error, or its last line."""
    found = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, re.M)
    if found:
        test = found.group(1).strip()
        return test if len(test) <= 100 else test[:97] + "..."
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:120] if lines else ""


def verdict(code):
    """killed: a test failed (1), the run was interrupted by errors (2: the mutant broke
    collection) or pytest broke (3); SURVIVED: every test passed; anything else is a problem
    of the list (4: usage, 5: no test collected) or the time limit."""
    if code is None:
        return "TIMEOUT"
    if code == 0:
        return "SURVIVED"
    if code in (1, 2, 3):
        return "killed"
    return f"ERROR (pytest exit {code})"


# ---------------------------------------------------------------- the table

def table(rows):
    lines = ["| mutant | file | bug it stands for | result | caught by | seconds |", "|---|---|---|---|---|---:|"]
    for mutant, result, caught, seconds in rows:
        bug, cell = (text.replace("|", "\\|") for text in (mutant.bug, caught))
        lines.append(f"| {mutant.name} | {mutant.file} | {bug} | {result} | {cell} | {seconds:.1f} |")
    killed = sum(1 for _, result, _, _ in rows if result == "killed")
    rate = 100.0 * killed / len(rows) if rows else 100.0
    return "\n".join(lines) + f"\n\nkilled {killed} of {len(rows)} mutants ({rate:.1f}%)\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run this mutant only (repeat for more; a name ending in * is a prefix)")
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per mutant's test run (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the tests once unmutated first")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the final table to FILE")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv",
                        help="the virtual environment with Caffe (default: .venv of the checkout)")
    args = parser.parse_args(argv)

    listing = load_list()
    chosen = list(listing.MUTANTS)
    if args.only:
        names = {m.name for m in chosen}
        unknown = [n for n in args.only if not (n.endswith("*") or n in names)]
        if unknown:
            sys.stderr.write(f"mutants: no mutant named {', '.join(unknown)} (see --list)\n")
            return 2
        chosen = [m for m in chosen if any(m.name == n or (n.endswith("*") and m.name.startswith(n[:-1]))
                                           for n in args.only)]
    problems = listing.problems(ROOT, chosen)
    if problems:
        sys.stderr.write("mutants: the list in mutants/mutants.py does not apply to this checkout (rewrite "
                         "these mutants for today's code):\n  " + "\n  ".join(problems) + "\n")
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:34} {m.file:34} {m.bug}\n{'':34} tests: {' '.join(m.tests)}")
        print(f"{len(chosen)} mutants")
        return 0
    if not (args.venv / "bin" / "python").exists():
        sys.stderr.write(f"mutants: {args.venv}/bin/python does not exist; run `make setup` first\n")
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="caffe-layers-mutants-"))
    try:
        copy_checkout(ROOT, scratch)
        python = shadow_venv(args.venv, scratch)
        env = scratch_env(scratch)
        print(f"scratch copy: {scratch}", flush=True)
        check_isolation(scratch, python, env)
        print("isolation checked: python, the caffe tool and the caffe-layers command load the scratch copy",
              flush=True)
        if not args.no_baseline:
            files = sorted({f for m in chosen for f in m.tests})
            print(f"baseline: {len(files)} test files, unmutated ...", flush=True)
            code, seconds, output = run_pytest(python, scratch, env, files, args.timeout * 3)
            if code != 0:
                sys.stderr.write(output[-4000:] + f"\nmutants: the tests fail without any mutant (pytest exit "
                                 f"{code}, {first_failure(output)}); fix them first\n")
                return 2
            print(f"baseline: passed in {seconds:.0f} s", flush=True)
        rows = []
        for i, mutant in enumerate(chosen, 1):
            path = scratch / mutant.file
            original = path.read_text()
            path.write_text(listing.apply(mutant, original))
            try:
                code, seconds, output = run_pytest(python, scratch, env, mutant.tests, args.timeout)
            finally:
                path.write_text(original)
            result = verdict(code)
            caught = first_failure(output) if result == "killed" else ""
            rows.append((mutant, result, caught, seconds))
            print(f"[{i:>3}/{len(chosen)}] {mutant.name:34} {result:9} {seconds:6.1f} s  {caught}", flush=True)
    except RuntimeError as error:
        sys.stderr.write(f"mutants: {error}\n")
        return 2
    finally:
        if args.keep:
            print(f"kept the scratch copy: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    text = table(rows)
    print("\n" + text, end="")
    if args.markdown:
        write_text(args.markdown, text)
    return 0 if all(result == "killed" for _, result, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

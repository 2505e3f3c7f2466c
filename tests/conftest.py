"""Shared fixtures: real Caffe nets written into pytest's tmp_path."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CAFFE_TOOL = Path(sys.executable).parent / "caffe"  # the wrapper scripts/setup.sh writes


# The environment the run started with: a module imported while collecting may change it (the
# demo and the experiments quiet Caffe's log and pin OpenBLAS to one thread for their own runs),
# and every test after collection must see the environment a user has.
_ENVIRONMENT = dict(os.environ)


def _restore_environment():
    for key in [key for key in os.environ if key not in _ENVIRONMENT and not key.startswith("PYTEST_")]:
        del os.environ[key]
    os.environ.update(_ENVIRONMENT)


def pytest_collection_finish(session):
    _restore_environment()


@pytest.fixture(autouse=True)
def user_environment():
    """Each test starts from the environment the run started with."""
    _restore_environment()
    yield


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test is a failure: every test must really run there."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        reporter.write_line(f"CI=true: {skipped} test(s) skipped; failing the run", red=True)
        session.exitstatus = 1


def write_h5(path, x, y=None):
    """An HDF5 file as Caffe's HDF5Data layer and the caffe-layers tool read it: float32 'data'
    and, when given, 'label'."""
    import h5py
    with h5py.File(path, "w") as f:
        f["data"] = np.asarray(x, np.float32)
        if y is not None:
            f["label"] = np.asarray(y, np.float32)


@pytest.fixture
def make_net(tmp_path):
    """make_net(prototxt_text, phase='TEST') -> caffe.Net built from a file in tmp_path."""
    caffe = pytest.importorskip("caffe")
    counter = iter(range(1000))

    def build(text, phase="TEST"):
        path = tmp_path / f"net{next(counter)}.prototxt"
        path.write_text(text)
        return caffe.Net(str(path), getattr(caffe, phase))
    return build


@pytest.fixture
def run_caffe(tmp_path):
    """run_caffe(args..., prototxt=text) -> CompletedProcess of the caffe tool, in tmp_path."""
    if not CAFFE_TOOL.exists():
        pytest.skip(f"{CAFFE_TOOL} does not exist (run scripts/setup.sh)")

    def run(*args, prototxt=None, timeout=120):
        argv = [str(CAFFE_TOOL), *args]
        if prototxt is not None:
            path = tmp_path / "cli_net.prototxt"
            path.write_text(prototxt)
            argv = [a.replace("{net}", str(path)) for a in argv]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def rng():
    return np.random.default_rng(12345)

"""examples/train.py, run as a user runs it (a subprocess in a folder holding a small net and solver):
weights and snapshots that do not fit are refused before Caffe reads them, the history describes
exactly the run's lineage, snapshots are complete whatever signal arrives, and outputs are
replaced in one step."""
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import caffe
import pytest
from caffe.proto import caffe_pb2

from conftest import ROOT

TRAIN = ROOT / "examples" / "train.py"

# Constant data and constant initial weights: every run is the same to the bit, and the first
# loss is known by hand. fc1: 3 -> 4, fc2: 4 -> 2, Euclidean loss with loss_weight 2.
TINY_NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "NAME1" type: "InnerProduct" bottom: "data" top: "hidden"
  inner_product_param { num_output: HIDDEN weight_filler { type: "constant" value: 0.1 }
                        bias_filler { type: "constant" value: 0 } } }
layer { name: "NAME2" type: "InnerProduct" bottom: "hidden" top: "score"
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "score" bottom: "label" top: "loss" loss_weight: 2 }
"""

# One 2000 -> 5000 layer (10M parameters): a snapshot takes a large fraction of a second to write.
BIG_NET = """name: "big"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 1 dim: 2000 } shape { dim: 1 dim: 2 }
    data_filler { type: "constant" value: 0.01 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "hidden"
  inner_product_param { num_output: 5000 weight_filler { type: "constant" value: 0.001 } } }
layer { name: "fc2" type: "InnerProduct" bottom: "hidden" top: "score"
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.001 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "score" bottom: "label" top: "loss" }
"""
BIG_COUNTS = [5000 * 2000, 5000, 2 * 5000, 2]


def tiny_net(hidden=4, names=("fc1", "fc2")):
    return TINY_NET.replace("HIDDEN", str(hidden)).replace("NAME1", names[0]).replace("NAME2", names[1])


def expected_first_loss(w1=0.1, w2=0.2, hidden=4):
    """The tiny net's objective before any update, in float64: data 1, label 0.5, biases 0."""
    score = hidden * (3 * w1) * w2
    euclidean = 4 * 2 * (score - 0.5) ** 2 / (2 * 4)     # sum of squares / (2 N), N = 4
    return 2 * euclidean                                   # loss_weight 2


def write_run(folder, net=None, max_iter=30, snapshot=10, test=True, name="tiny"):
    """A net and a solver in ``folder``, with paths relative to it (train.py runs there)."""
    (folder / f"{name}_net.prototxt").write_text(net or tiny_net())
    tests = "test_iter: 1\ntest_interval: 5\n" if test else ""
    (folder / f"{name}_solver.prototxt").write_text(
        f'net: "{name}_net.prototxt"\n{tests}base_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\n'
        f'max_iter: {max_iter}\nsnapshot: {snapshot}\nsnapshot_prefix: "run/{name}"\nrandom_seed: 1\n'
        f'solver_mode: CPU\n')
    return f"{name}_solver.prototxt"


def train(folder, *args, solver="tiny_solver.prototxt", status=0):
    done = subprocess.run([sys.executable, str(TRAIN), "--solver", solver, "--no-progress", *map(str, args)],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == status, f"status {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def files(folder):
    """{relative path: (bytes, mtime)} of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def history(folder, prefix="run/tiny"):
    return json.loads((folder / f"{prefix}_history.json").read_text())


def one_line(stderr):
    assert "Traceback" not in stderr and stderr.strip() and "\n" not in stderr.strip(), stderr
    return stderr.strip()


def save_weights(path, net_text, values, legacy=False):
    """Write a .caffemodel of ``net_text`` with the weights of layer L set to ``values[L]``, biases 0;
    ``legacy``: blobs in Caffe's old num/channels/height/width form (``(a, b)`` as ``(1, 1, a, b)``),
    or a callable (layer, shape) -> the 4 legacy dims to write."""
    prototxt = path.with_suffix(".prototxt")
    prototxt.write_text(net_text)
    net = caffe.Net(str(prototxt), caffe.TEST)
    for layer, value in values.items():
        weight, bias = net.params[layer]
        weight.data[...] = value
        bias.data[...] = 0
    net.save(str(path))
    if legacy:
        model = caffe_pb2.NetParameter()
        model.ParseFromString(path.read_bytes())
        for layer in model.layer:
            for blob in layer.blobs:
                dims = [int(d) for d in blob.shape.dim]
                four = legacy(layer.name, dims) if callable(legacy) else [1] * (4 - len(dims)) + dims
                blob.ClearField("shape")
                blob.num, blob.channels, blob.height, blob.width = four
        path.write_bytes(model.SerializeToString())
    prototxt.unlink()
    return path


def load_train_module():
    spec = importlib.util.spec_from_file_location("examples_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- a plain run

def test_a_run_writes_complete_snapshots_and_its_history(tmp_path):
    write_run(tmp_path)
    done = train(tmp_path)
    assert "iteration 30: loss" in done.stdout and done.stderr == ""
    h = history(tmp_path)
    assert h["start"] == 0 and len(h["loss"]) == 30
    assert h["loss"][0] == pytest.approx(expected_first_loss(), rel=1e-6)     # sum of loss_weight * top
    assert h["loss"][-1] < h["loss"][0] / 10
    assert [v["iter"] for v in h["val"]] == [5, 10, 15, 20, 25, 30]
    assert sorted(h["snapshots"], key=int) == ["10", "20", "30"]
    for i in (10, 20, 30):
        state_bytes = (tmp_path / f"run/tiny_iter_{i}.solverstate").read_bytes()
        assert h["snapshots"][str(i)] == hashlib.sha256(state_bytes).hexdigest()
        state = caffe_pb2.SolverState()
        state.ParseFromString(state_bytes)
        assert state.iter == i and state.learned_net == f"run/tiny_iter_{i}.caffemodel"
        assert [len(b.data) for b in state.history] == [12, 4, 8, 2]
    assert (tmp_path / "run/tiny_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []


def test_history_and_plot_are_replaced_not_written_through(tmp_path):
    """A file written in place would change every hard link to it; one renamed into place does not."""
    write_run(tmp_path, max_iter=10)
    (tmp_path / "run").mkdir()
    for name in ("tiny_history.json", "tiny_loss.png"):
        (tmp_path / f"keep_{name}").write_text("an earlier file")
        os.link(tmp_path / f"keep_{name}", tmp_path / "run" / name)
    train(tmp_path)
    for name in ("tiny_history.json", "tiny_loss.png"):
        assert (tmp_path / f"keep_{name}").read_text() == "an earlier file"
    assert len(history(tmp_path)["loss"]) == 10
    assert (tmp_path / "run/tiny_loss.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- --weights

def _other_names(path):
    return save_weights(path, tiny_net(names=("ip1", "ip2")), {"ip1": 0.05, "ip2": 0.3})


def _wrong_shape(path):
    return save_weights(path, tiny_net(hidden=5), {"fc1": 0.05, "fc2": 0.3})


def _legacy_transposed(path):
    return save_weights(path, tiny_net(), {"fc1": 0.05, "fc2": 0.3},
                        legacy=lambda layer, dims: [1, 1, *reversed(dims)] if len(dims) == 2 else [1, 1, 1, *dims])


def _empty(path):
    path.write_bytes(b"")
    return path


def _truncated(path):
    save_weights(path, tiny_net(), {"fc1": 0.05, "fc2": 0.3})
    path.write_bytes(path.read_bytes()[:-20])
    return path


@pytest.mark.parametrize("make, expected", [
    (_empty, ["is empty"]),
    (_other_names, ["'fc1'", "is not in the weights"]),
    (_wrong_shape, ["'fc1'", "(5, 3)", "(4, 3)"]),
    (_legacy_transposed, ["'fc1'", "(1, 1, 3, 4)", "legacy"]),
    (_truncated, ["weights.caffemodel"]),
], ids=["empty", "other-layer-names", "wrong-shape", "legacy-4d-wrong-shape", "truncated"])
def test_weights_that_do_not_fit_the_net_are_refused(tmp_path, make, expected):
    write_run(tmp_path)
    make(tmp_path / "weights.caffemodel")
    before = files(tmp_path)
    done = train(tmp_path, "--weights", "weights.caffemodel", status=2)
    line = one_line(done.stderr)
    assert line.startswith("train.py: error: --weights 'weights.caffemodel'"), line
    for text in expected:
        assert text in line, line
    assert files(tmp_path) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["blob-shape", "legacy-4d"])
def test_weights_that_fit_are_used(tmp_path, legacy):
    write_run(tmp_path)
    save_weights(tmp_path / "weights.caffemodel", tiny_net(), {"fc1": 0.05, "fc2": 0.3}, legacy=legacy)
    train(tmp_path, "--weights", "weights.caffemodel", "--until", 2)
    # the first loss is that of the given weights, not of the net's fillers (0.1, 0.2)
    assert history(tmp_path)["loss"][0] == pytest.approx(expected_first_loss(0.05, 0.3), rel=1e-6)


# ---------------------------------------------------------------- history lineage

def test_resume_keeps_the_history_up_to_the_snapshot_only(tmp_path):
    write_run(tmp_path)
    train(tmp_path)
    full = history(tmp_path)
    later = {p: files(tmp_path)[p] for p in ("run/tiny_iter_30.solverstate", "run/tiny_iter_30.caffemodel",
                                             "run/tiny_iter_20.solverstate", "run/tiny_iter_20.caffemodel")}
    done = train(tmp_path, "--resume", "run/tiny_iter_20.solverstate", "--until", 25)
    assert "training from iteration 20 to 25, resumed from" in done.stdout and done.stderr == ""
    h = history(tmp_path)
    assert h["start"] == 0 and len(h["loss"]) == 25
    # the same data and the restored weights and momentum: iterations 21-25 repeat the first run's
    assert h["loss"] == pytest.approx(full["loss"][:25], rel=1e-6)
    assert [v["iter"] for v in h["val"]] == [5, 10, 15, 20, 25]
    assert sorted(h["snapshots"], key=int) == ["10", "20", "25"]
    assert {p: files(tmp_path)[p] for p in later} == later          # earlier snapshots untouched


def test_a_fresh_run_starts_a_fresh_history_and_an_old_one_is_not_continued(tmp_path):
    write_run(tmp_path)
    train(tmp_path)
    train(tmp_path, "--until", 5)                      # a fresh run over the same prefix
    h = history(tmp_path)
    assert h["start"] == 0 and len(h["loss"]) == 5
    assert [v["iter"] for v in h["val"]] == [5] and list(h["snapshots"]) == ["5"]
    # the snapshot at 20 is from the first run: the history (iterations 0-5) did not lead to it
    done = train(tmp_path, "--resume", "run/tiny_iter_20.solverstate", "--until", 25)
    line = one_line(done.stderr)
    assert line.startswith("train.py: warning: history run/tiny_history.json belongs to another run"), line
    h = history(tmp_path)
    assert h["start"] == 20 and len(h["loss"]) == 5
    assert [v["iter"] for v in h["val"]] == [25] and sorted(h["snapshots"], key=int) == ["20", "25"]


@pytest.mark.parametrize("content", [b'{"start": 0, "loss": [0.1, 0.', b"[1, 2]", b"\xff\xfe"],
                         ids=["truncated-json", "not-an-object", "not-utf8"])
def test_a_corrupt_history_gives_a_warning_and_a_fresh_history(tmp_path, content):
    write_run(tmp_path)
    train(tmp_path)
    (tmp_path / "run/tiny_history.json").write_bytes(content)
    done = train(tmp_path, "--resume", "run/tiny_iter_20.solverstate", "--until", 25)
    line = one_line(done.stderr)
    assert line.startswith("train.py: warning: history run/tiny_history.json is unreadable"), line
    assert "fresh history at iteration 20" in line
    h = history(tmp_path)
    assert h["start"] == 20 and len(h["loss"]) == 5 and [v["iter"] for v in h["val"]] == [25]


# ---------------------------------------------------------------- --resume checks

def _cut_in_half(folder):
    path = folder / "run/tiny_iter_30.solverstate"
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _cut_between_history_blobs(folder):
    """Truncated exactly after the third of four history blobs: the rest still parses."""
    path = folder / "run/tiny_iter_30.solverstate"
    state = caffe_pb2.SolverState()
    state.ParseFromString(path.read_bytes())
    del state.history[3]
    state.ClearField("current_step")
    head = state.SerializeToString()
    assert path.read_bytes().startswith(head)
    path.write_bytes(head)


def _weights_cut(folder):
    path = folder / "run/tiny_iter_30.caffemodel"
    path.write_bytes(path.read_bytes()[:100])


def _weights_gone(folder):
    (folder / "run/tiny_iter_30.caffemodel").unlink()


@pytest.mark.parametrize("damage, expected", [
    (_cut_in_half, "does not parse as a solver state"),
    (_cut_between_history_blobs, "holds 3 history blobs where a SGD solver of this net has 4"),
    (_weights_cut, "its weights 'run/tiny_iter_30.caffemodel'"),
    (_weights_gone, "its weights 'run/tiny_iter_30.caffemodel' (learned_net"),
], ids=["solverstate-cut", "solverstate-cut-at-a-blob", "weights-cut", "weights-missing"])
def test_a_damaged_snapshot_is_refused_naming_the_newest_intact_one(tmp_path, damage, expected):
    write_run(tmp_path)
    train(tmp_path)
    damage(tmp_path)
    before = files(tmp_path)
    done = train(tmp_path, "--resume", "run/tiny_iter_30.solverstate", status=2)
    line = one_line(done.stderr)
    assert line.startswith("train.py: error: --resume 'run/tiny_iter_30.solverstate' cannot be restored: "), line
    assert expected in line, line
    assert line.endswith("the newest intact snapshot with this prefix is 'run/tiny_iter_20.solverstate': "
                         "resume from that"), line
    assert files(tmp_path) == before
    train(tmp_path, "--resume", "run/tiny_iter_20.solverstate")       # and that one does resume


def test_no_intact_snapshot_is_said_so(tmp_path):
    write_run(tmp_path)
    train(tmp_path)
    for i in (10, 20, 30):
        path = tmp_path / f"run/tiny_iter_{i}.solverstate"
        path.write_bytes(path.read_bytes()[:40])
    before = files(tmp_path)
    done = train(tmp_path, "--resume", "run/tiny_iter_20.solverstate", status=2)
    line = one_line(done.stderr)
    assert line.endswith("no other run/tiny_iter_*.solverstate is intact: start again without --resume"), line
    assert files(tmp_path) == before


def test_a_snapshot_of_another_net_is_refused(tmp_path):
    write_run(tmp_path)
    train(tmp_path)
    (tmp_path / "tiny_net.prototxt").write_text(tiny_net(hidden=5))
    before = files(tmp_path)
    done = train(tmp_path, "--resume", "run/tiny_iter_30.solverstate", status=2)
    line = one_line(done.stderr)
    assert "history blob 0 has 12 values where this net's parameter has 15" in line, line
    assert line.endswith("no other run/tiny_iter_*.solverstate is intact: start again without --resume"), line
    assert files(tmp_path) == before


@pytest.mark.parametrize("args, expected", [
    (["--until", "0"], "--until 0 is outside 1..30"),
    (["--until", "31"], "--until 31 is outside 1..30 (the solver's max_iter)"),
    (["--resume", "run/tiny_iter_20.solverstate", "--until", "20"],
     "--until 20 is not after the snapshot's iteration 20"),
], ids=["zero", "past-max-iter", "not-after-the-snapshot"])
def test_until_that_cannot_be_reached_is_refused(tmp_path, args, expected):
    write_run(tmp_path)
    train(tmp_path)
    before = files(tmp_path)
    line = one_line(train(tmp_path, *args, status=2).stderr)
    assert expected in line, line
    assert files(tmp_path) == before


# ---------------------------------------------------------------- signals

def test_held_signals_records_and_then_restores_the_handlers():
    module = load_train_module()
    before = {s: signal.getsignal(s) for s in module.STOP_SIGNALS}
    with module.held_signals() as received:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)                      # the handlers run between bytecodes
        assert received == [signal.SIGTERM, signal.SIGINT]
    assert {s: signal.getsignal(s) for s in module.STOP_SIGNALS} == before


def _check_snapshot(folder, state_path):
    """Parse a snapshot of BIG_NET as Caffe would restore it: every blob complete."""
    state = caffe_pb2.SolverState()
    state.ParseFromString(state_path.read_bytes())
    assert [len(b.data) for b in state.history] == BIG_COUNTS
    model = caffe_pb2.NetParameter()
    model.ParseFromString((folder / state.learned_net).read_bytes())
    assert [len(b.data) for layer in model.layer for b in layer.blobs] == BIG_COUNTS
    return state.iter


def test_a_second_sigterm_waits_for_the_final_snapshot(tmp_path):
    write_run(tmp_path, net=BIG_NET, max_iter=100000, snapshot=0, test=False, name="big")
    process = subprocess.Popen([sys.executable, str(TRAIN), "--solver", "big_solver.prototxt", "--no-progress"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()             # printed once the signals are held
        assert "training from iteration 0" in first, first + process.stderr.read()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        writing = process.stdout.readline()           # printed just before the snapshot is written
        process.send_signal(signal.SIGTERM)           # while it is written (it takes a good part of a second)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, writing + stdout + stderr
    assert "writing the snapshot, the history and the plot first" in writing, writing
    iteration = int(stdout.split("stopped by signal 15 at iteration ")[1].split(";")[0])
    assert _check_snapshot(tmp_path, tmp_path / f"run/big_iter_{iteration}.solverstate") == iteration
    assert len(history(tmp_path, "run/big")["loss"]) == iteration
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "big_history.json", f"big_iter_{iteration}.caffemodel", f"big_iter_{iteration}.solverstate", "big_loss.png"]


def test_a_kill_during_periodic_snapshots_leaves_only_complete_ones(tmp_path):
    """kill -9 cannot be held: whenever it comes, every snapshot under its final name is complete (a
    snapshot is written under a temporary name and renamed), and the run resumes from the newest."""
    write_run(tmp_path, net=BIG_NET, max_iter=100000, snapshot=2, test=False, name="big")
    process = subprocess.Popen([sys.executable, str(TRAIN), "--solver", "big_solver.prototxt", "--no-progress"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "training from iteration 0" in process.stdout.readline()
        time.sleep(2.5)                               # most of this time goes into writing snapshots
    finally:
        process.kill()
        process.communicate(timeout=60)
    states = sorted((tmp_path / "run").glob("big_iter_*.solverstate"), key=lambda p: int(p.stem.split("_")[-1]))
    assert states, "no snapshot was written in 2.5 s"
    for path in states:
        assert _check_snapshot(tmp_path, path) == int(path.stem.split("_")[-1])
    for path in (tmp_path / "run").glob("big_iter_*.caffemodel"):     # weights without a state too
        model = caffe_pb2.NetParameter()
        model.ParseFromString(path.read_bytes())
        assert [len(b.data) for layer in model.layer for b in layer.blobs] == BIG_COUNTS, path
    newest = int(states[-1].stem.split("_")[-1])
    done = train(tmp_path, "--resume", states[-1].relative_to(tmp_path), "--until", newest + 1,
                 solver="big_solver.prototxt")
    assert f"training from iteration {newest} to {newest + 1}" in done.stdout
    # a snapshot the kill cut short stays under its hidden temporary name and is removed now; a kill
    # between the snapshot and its history entry leaves a history that does not lead to it
    for line in done.stderr.splitlines():
        assert line.startswith(("train.py: warning: removing run/.big.partial_iter_",
                                "train.py: warning: history run/big_history.json belongs to another run")), line
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]

#!/usr/bin/env python3
"""Train a Caffe solver from Python: a progress bar, safe snapshots, resume, a loss-curve plot.

    .venv/bin/python examples/train.py --solver prototxt/focal_solver.prototxt
    .venv/bin/python examples/train.py --solver prototxt/focal_solver.prototxt \\
        --resume runs/focal/focal_iter_500.solverstate

What it does beyond ``caffe train``:
- a tqdm progress bar with the running training loss (Caffe's ``average_loss`` window) and the
  latest validation figures;
- the validation pass (the solver's ``test_iter`` batches every ``test_interval`` iterations)
  run from Python, so its figures, averaged over the batches as Caffe does, are kept;
- snapshots every ``snapshot`` iterations, after the last iteration, and on SIGINT or SIGTERM
  (the current iteration finishes, a snapshot is written, the script exits with status 130 or
  143). Each snapshot is written under a temporary name and renamed into place, the weights
  before the solver state, so a ``.solverstate`` on disk is always complete; while a snapshot,
  the history and the plot are written, further SIGINT/SIGTERM wait for them;
- ``--weights`` and ``--resume`` are checked before Caffe reads them: weights must fit the net
  (every layer with parameters present, same shapes), a solver state must be complete and its
  weights must fit; otherwise one line on stderr (naming the newest intact snapshot with the
  same prefix) and exit status 2;
- ``PREFIX_history.json`` (per-iteration loss, validation figures) and ``PREFIX_loss.png`` next
  to the snapshots (``PREFIX`` is the solver's ``snapshot_prefix``). The history describes
  exactly this run's lineage: a fresh run starts a fresh history; ``--resume`` keeps what led
  to the snapshot (the history records a checksum of each snapshot it belongs to) and drops the
  rest; a history that is unreadable or belongs to another run is replaced, with a warning.

Paths in the solver are read from the working directory, as the ``caffe`` tool does; run it
from the repository root for the shipped prototxt/. CPU mode. ``OPENBLAS_NUM_THREADS`` is 1
unless set, so runs repeat to the bit on any machine.
"""
import argparse
import contextlib
import glob
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # must precede `import caffe` (OpenBLAS reads it once)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, ROOT)    # caffe_layers from this checkout when it is not installed

from caffe_layers.caffemodel import check_weights  # noqa: E402
from caffe_layers.files import save_figure, write_text  # noqa: E402
from caffe_layers.testing import net_objective  # noqa: E402

PROG = "train.py"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SNAPSHOT_NAME = re.compile(r"^(?P<prefix>.*)_iter_(?P<iter>\d+)\.solverstate$")
# solver types whose state holds two history blobs per learnable parameter (Caffe's PreSolve)
HISTORY_PER_PARAM = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}


class Refused(Exception):
    """A mistake in what was given (solver, options, files): one line, exit status 2."""


# ---------------------------------------------------------------- history

@dataclass
class History:
    """What one lineage of snapshots went through.

    ``loss[i]``: the training loss of iteration ``start + i + 1``; ``val``: one dict per validation
    (``{"iter": i, "loss": ..., "mAP": ...}``); ``snapshots``: ``{iteration: sha256 of the
    .solverstate written there}``, which ties the history to its own snapshots.
    """
    start: int = 0
    loss: List[float] = field(default_factory=list)
    val: List[dict] = field(default_factory=list)
    snapshots: Dict[int, str] = field(default_factory=dict)

    @property
    def end(self):
        return self.start + len(self.loss)

    def truncate(self, iteration):
        """Keep what happened up to ``iteration`` (resuming from the snapshot taken there)."""
        if not self.start <= iteration <= self.end:
            raise ValueError(f"iteration {iteration} is outside the history's {self.start}..{self.end}")
        del self.loss[iteration - self.start:]
        self.val = [v for v in self.val if v["iter"] <= iteration]
        self.snapshots = {i: digest for i, digest in self.snapshots.items() if i <= iteration}

    def save(self, path):
        data = {"start": self.start, "loss": self.loss, "val": self.val,
                "snapshots": {str(i): digest for i, digest in sorted(self.snapshots.items())}}
        write_text(path, json.dumps(data))

    @classmethod
    def load(cls, path):
        """Read a history; ``ValueError`` naming what is wrong if the file is not one."""
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        start, loss, val = data.get("start"), data.get("loss"), data.get("val")
        snapshots = data.get("snapshots", {})
        if not (isinstance(start, int) and start >= 0):
            raise ValueError(f"'start' is {start!r}, not an iteration")
        if not (isinstance(loss, list) and all(isinstance(x, (int, float)) for x in loss)):
            raise ValueError("'loss' is not a list of numbers")
        if not (isinstance(val, list) and all(isinstance(v, dict) and isinstance(v.get("iter"), int) for v in val)):
            raise ValueError("'val' is not a list of validations with an 'iter'")
        if not (isinstance(snapshots, dict) and all(k.isdigit() and isinstance(d, str) for k, d in snapshots.items())):
            raise ValueError("'snapshots' is not {iteration: checksum}")
        return cls(start, [float(x) for x in loss], val, {int(k): d for k, d in snapshots.items()})


def history_for_resume(path, iteration, digest, warn):
    """The history that led to the snapshot at ``iteration`` (checksum ``digest``), else a fresh one."""
    fresh = History(start=iteration, snapshots={iteration: digest})
    if not os.path.exists(path):
        warn(f"no history {path}: it starts at iteration {iteration}")
        return fresh
    try:
        history = History.load(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        why = (str(error) or type(error).__name__).splitlines()[0][:200]
        warn(f"history {path} is unreadable ({why}); starting a fresh history at iteration {iteration}; the "
             f"file is replaced when this run saves its history")
        return fresh
    if history.snapshots.get(iteration) != digest:
        recorded = ", ".join(map(str, sorted(history.snapshots))) or "none"
        warn(f"history {path} belongs to another run (its snapshots: {recorded}; iterations {history.start}.."
             f"{history.end}), not to this snapshot at iteration {iteration}; starting a fresh history at "
             f"iteration {iteration}")
        return fresh
    history.truncate(iteration)
    return history


# ---------------------------------------------------------------- signals

@contextlib.contextmanager
def held_signals(signals=STOP_SIGNALS):
    """Record SIGINT/SIGTERM instead of acting on them; yields the list of signals received.

    The caller checks the list where stopping is safe. On leaving, the previous handlers are back.
    """
    received = []

    def record(signum, frame):
        received.append(signum)

    previous = {s: signal.signal(s, record) for s in signals}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------- solver, snapshots

def read_solver(path):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    param = caffe_pb2.SolverParameter()
    try:
        with open(path) as handle:
            text_format.Merge(handle.read(), param)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise Refused(f"--solver {path!r} is not a solver prototxt: {error}") from None
    return param


def check_solver(path, param):
    """What train.py needs of a solver; ``Refused`` naming the field otherwise."""
    from caffe.proto import caffe_pb2
    if not param.snapshot_prefix:
        raise Refused(f"--solver {path!r} has no snapshot_prefix; set it (snapshots, history and plot go there)")
    if param.snapshot_format != caffe_pb2.SolverParameter.BINARYPROTO:
        raise Refused(f"--solver {path!r} sets snapshot_format: HDF5; train.py writes binary snapshots: remove "
                      f"that line (or use caffe train)")
    for key in ("net", "train_net"):
        net = getattr(param, key)
        if net and not os.path.isfile(net):
            raise Refused(f"--solver {path!r}: its {key} {net!r} does not exist (paths in a solver are read from "
                          f"the working directory, {os.getcwd()!r}: run from the folder they are relative to)")
    folder = os.path.dirname(param.snapshot_prefix) or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise Refused(f"--solver {path!r}: snapshot_prefix {param.snapshot_prefix!r} is under {folder!r}, "
                      f"which is a file, not a folder")


def _temporary_solver(param, snapshot_prefix):
    """A copy of the solver file for Caffe: its tests never come and it takes no snapshot itself.

    The validation runs from Python (Caffe wants ``test_interval > 0`` when the net has a TEST
    phase); snapshots are taken by ``Snapshots`` under ``snapshot_prefix`` and renamed into place.
    """
    from google.protobuf import text_format
    copy = type(param)()
    copy.CopyFrom(param)
    copy.test_interval = 2 ** 31 - 1
    copy.test_initialization = False
    copy.snapshot = 0
    copy.snapshot_after_train = False
    copy.snapshot_prefix = snapshot_prefix
    handle = tempfile.NamedTemporaryFile("w", suffix="_solver.prototxt", delete=False)
    with handle:
        handle.write(text_format.MessageToString(copy))
    return handle.name


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


class Snapshots:
    """Caffe's snapshots (``PREFIX_iter_N.caffemodel`` and ``.solverstate``), written so a file on
    disk under those names is always complete.

    Caffe writes both files under a hidden temporary prefix in the same folder; the weights are
    renamed into place first, then the solver state, with its ``learned_net`` pointing at the final
    name. A run killed mid-write leaves only the hidden files, removed at the next start.
    """

    def __init__(self, prefix):
        self.prefix = prefix
        folder, base = os.path.split(prefix)
        self.partial = os.path.join(folder, f".{base}.partial")

    def leftovers(self):
        return sorted(glob.glob(glob.escape(self.partial) + "_iter_*"))

    def path(self, iteration, ext=".solverstate"):
        return f"{self.prefix}_iter_{iteration}{ext}"

    def take(self, solver):
        """Snapshot the solver; returns (path of the .solverstate, sha256 of its bytes)."""
        from caffe.proto import caffe_pb2
        iteration = solver.iter
        solver.snapshot()           # Caffe writes PARTIAL_iter_N.caffemodel and PARTIAL_iter_N.solverstate
        partial_model = f"{self.partial}_iter_{iteration}.caffemodel"
        partial_state = f"{self.partial}_iter_{iteration}.solverstate"
        state = caffe_pb2.SolverState()
        with open(partial_state, "rb") as handle:
            state.ParseFromString(handle.read())
        state.learned_net = self.path(iteration, ".caffemodel")    # as Caffe writes it: the prefix + name
        data = state.SerializeToString()
        with open(partial_state, "wb") as handle:
            handle.write(data)
        os.replace(partial_model, state.learned_net)                # the weights first: a state on disk
        os.replace(partial_state, self.path(iteration))             # always finds its weights complete
        return self.path(iteration), _sha256(data)


def learnable_counts(net):
    """Value counts of the net's learnable parameter blobs, in Caffe's ``learnable_params`` order
    (a blob shared with an earlier layer counts once: it shares that layer's memory)."""
    seen, counts = set(), []
    for blobs in net.params.values():
        for blob in blobs:
            address = blob.data.__array_interface__["data"][0] if blob.data.size else None
            if address is not None and address in seen:
                continue
            seen.add(address)
            counts.append(blob.count)
    return counts


def _blob_count(blob):
    dims = [blob.num, blob.channels, blob.height, blob.width] if any(
        blob.HasField(d) for d in ("num", "channels", "height", "width")) else list(blob.shape.dim)
    count = 1
    for d in dims:
        count *= int(d)
    return count


def check_solverstate(path, net, param):
    """Raise ``ValueError`` (what is wrong, without the path) unless ``path`` is a complete solver state
    that Caffe can restore into ``net``'s solver. Returns (the state's iteration, sha256 of its bytes)."""
    from caffe.proto import caffe_pb2
    from google.protobuf.message import DecodeError
    with open(path, "rb") as handle:
        data = handle.read()
    if not data:
        raise ValueError("it is empty (0 bytes)")
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise ValueError(f"it does not parse as a solver state ({len(data)} bytes: truncated or not a "
                         f".solverstate)") from None
    if not state.learned_net:
        raise ValueError("it names no weights file (learned_net)")
    for i, blob in enumerate(state.history):
        values = len(blob.double_data) or len(blob.data)
        if values != _blob_count(blob):
            raise ValueError(f"history blob {i} holds {values} values where its shape needs {_blob_count(blob)} "
                             f"(truncated)")
    counts = learnable_counts(net)
    per_param = HISTORY_PER_PARAM.get(param.type)
    if per_param is not None:
        wanted = [c for _ in range(per_param) for c in counts]
        if len(state.history) != len(wanted):
            raise ValueError(f"it holds {len(state.history)} history blobs where a {param.type} solver of this net "
                             f"has {len(wanted)} (truncated, or written for another net or solver type)")
        for i, (blob, count) in enumerate(zip(state.history, wanted)):
            if _blob_count(blob) != count:
                raise ValueError(f"history blob {i} has {_blob_count(blob)} values where this net's parameter has "
                                 f"{count} (written for another net)")
    if not state.HasField("current_step"):
        raise ValueError("it ends before current_step, which Caffe writes last (truncated)")
    if not os.path.isfile(state.learned_net):
        raise ValueError(f"its weights {state.learned_net!r} (learned_net, read from the working directory "
                         f"{os.getcwd()!r}) do not exist")
    check_weights(net, state.learned_net, option="its weights")
    return state.iter, _sha256(data)


def check_resume(path, net, param):
    """``check_solverstate`` for ``--resume``; ``Refused`` naming the newest intact snapshot otherwise."""
    try:
        return check_solverstate(path, net, param)
    except ValueError as error:
        problem = f"--resume {path!r} cannot be restored: {error}"
    match = SNAPSHOT_NAME.match(path)
    if not match:
        raise Refused(f"{problem}; give a PREFIX_iter_N.solverstate that training wrote")
    prefix = match["prefix"]
    candidates = []
    for other in glob.glob(glob.escape(prefix) + "_iter_*.solverstate"):
        found = SNAPSHOT_NAME.match(other)
        if found and found["prefix"] == prefix and not os.path.samefile(other, path):
            candidates.append((int(found["iter"]), other))
    for _, other in sorted(candidates, reverse=True):
        try:
            check_solverstate(other, net, param)
        except (OSError, ValueError):
            continue
        raise Refused(f"{problem}; the newest intact snapshot with this prefix is {other!r}: resume from that")
    raise Refused(f"{problem}; no other {prefix}_iter_*.solverstate is intact: start again without --resume")


# ---------------------------------------------------------------- training

@dataclass
class Result:
    iterations: int                 # the solver's iteration at the end
    history: History
    snapshot: Optional[str]         # the last .solverstate written
    seconds: float                  # time spent in training and validation steps
    stopped_by: Optional[int] = None    # the signal that stopped training, if one did


def validate(net, train_net, batches):
    """Average each output blob of a TEST net over ``batches`` forward passes (as ``caffe train`` does)."""
    sums = {}
    net.share_with(train_net)   # Caffe shares the trained weights only when it tests: do it here
    for _ in range(batches):
        outputs = net.forward()
        for name, value in outputs.items():
            sums[name] = sums.get(name, 0.0) + float(value.sum())
    return {name: total / batches for name, total in sums.items()}


def plot_history(history, path, title):
    """The loss curve, written to a temporary name and renamed over ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    figure, axes = plt.subplots(figsize=(6, 4))
    iters = history.start + 1 + np.arange(len(history.loss))
    axes.plot(iters, history.loss, lw=0.5, alpha=0.35, color="C0", label="train (per iteration)")
    window = min(50, max(1, len(history.loss) // 10))
    if len(history.loss) >= window:
        smooth = np.convolve(history.loss, np.ones(window) / window, mode="valid")
        axes.plot(iters[window - 1:], smooth, color="C0", label=f"train ({window}-iteration mean)")
    if history.val and "loss" in history.val[0]:
        axes.plot([v["iter"] for v in history.val], [v["loss"] for v in history.val], "o-", color="C1",
                  label="validation")
    axes.set(xlabel="iteration", ylabel="loss", title=title)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path, format="png")


def _format(values):
    return " ".join(f"{k} {v:.3f}" for k, v in values.items() if k != "iter")


def _warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def train(solver_path, resume=None, weights=None, until=None, progress=True, desc=None, log=print, warn=_warn):
    """Train with pycaffe; returns a ``Result``. ``until``: stop at this iteration (default max_iter).

    Raises ``Refused`` (before anything is written) for a solver, ``--weights``, ``--resume`` or
    ``--until`` that cannot be right.
    """
    param = read_solver(solver_path)
    check_solver(solver_path, param)
    if until is not None and not 0 < until <= param.max_iter:
        raise Refused(f"--until {until} is outside 1..{param.max_iter} (the solver's max_iter)")
    import caffe
    from tqdm import tqdm
    caffe.set_mode_cpu()
    prefix = param.snapshot_prefix
    snapshots = Snapshots(prefix)
    temporary = _temporary_solver(param, snapshots.partial)
    try:
        solver = caffe.get_solver(temporary)
    finally:
        os.unlink(temporary)
    history_path = f"{prefix}_history.json"
    if resume:
        iteration, digest = check_resume(resume, solver.net, param)
        if until is not None and until <= iteration:
            raise Refused(f"--until {until} is not after the snapshot's iteration {iteration}")
    elif weights:
        try:
            check_weights(solver.net, weights, option="--weights")
        except ValueError as error:
            raise Refused(str(error)) from None

    # from here on files are written
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    for leftover in snapshots.leftovers():
        warn(f"removing {leftover}, a snapshot an earlier run did not finish writing")
        os.unlink(leftover)
    if resume:
        solver.restore(resume)
        history = history_for_resume(history_path, solver.iter, digest, warn)
    else:
        if weights:
            solver.net.copy_from(weights)
        history = History(start=solver.iter)      # a fresh run: a fresh history, whatever the prefix held
    end = until or param.max_iter
    test_net = solver.test_nets[0] if len(solver.test_nets) else None
    test_iter = param.test_iter[0] if param.test_iter else 0
    window = max(1, param.average_loss)
    desc = desc or os.path.basename(prefix)
    snapshot = snapshots.path(solver.iter) if resume else None     # the latest snapshot of this lineage

    with held_signals() as stop:
        log(f"{desc}: training from iteration {solver.iter} to {end}" + (f", resumed from {resume}" if resume else ""),
            flush=True)
        started = time.perf_counter()
        with tqdm(total=end, initial=solver.iter, desc=desc, unit="it",
                  disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
            while solver.iter < end and not stop:
                solver.step(1)
                history.loss.append(net_objective(solver.net))
                bar.update(1)
                recent = history.loss[-window:]
                postfix = f"loss {sum(recent) / len(recent):.4f}"
                if test_net is not None and param.test_interval and (
                        solver.iter % param.test_interval == 0 or solver.iter == end):
                    history.val.append({"iter": solver.iter, **validate(test_net, solver.net, test_iter)})
                if history.val:
                    postfix += f" | val@{history.val[-1]['iter']} " + _format(history.val[-1])
                bar.set_postfix_str(postfix, refresh=False)
                if param.snapshot and solver.iter % param.snapshot == 0 and solver.iter < end and not stop:
                    snapshot, history.snapshots[solver.iter] = snapshots.take(solver)
                    history.save(history_path)
        seconds = time.perf_counter() - started
        if stop:
            log(f"{desc}: signal {stop[0]} at iteration {solver.iter}: writing the snapshot, the history and the "
                f"plot first (further signals wait for them)", flush=True)
        if snapshot != snapshots.path(solver.iter):
            snapshot, history.snapshots[solver.iter] = snapshots.take(solver)
        history.save(history_path)
        plot_history(history, f"{prefix}_loss.png", os.path.basename(prefix))
    if stop:
        log(f"{desc}: stopped by signal {stop[0]} at iteration {solver.iter}; resume with --resume {snapshot}",
            flush=True)
    return Result(solver.iter, history, snapshot, seconds, stop[0] if stop else None)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--solver", required=True, help="solver prototxt")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="SOLVERSTATE", help="continue from this snapshot (checked first)")
    start.add_argument("--weights", metavar="CAFFEMODEL",
                       help="start from these weights (fine-tuning); every layer of the net with parameters "
                            "must be in them, with the same shapes")
    parser.add_argument("--until", type=int, metavar="ITER", help="stop at this iteration (default: max_iter)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="show Caffe's own log")
    args = parser.parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        for option in ("solver", "resume", "weights"):
            path = getattr(args, option)
            if path and not os.path.isfile(path):
                raise Refused(f"--{option} {path!r} does not exist or is not a file")
        result = train(args.solver, args.resume, args.weights, args.until, progress=not args.no_progress)
    except Refused as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    h = result.history
    recent = h.loss[-50:]
    val = f"; validation at {h.val[-1]['iter']}: {_format(h.val[-1])}" if h.val else ""
    print(f"iteration {result.iterations}: loss {sum(recent) / max(1, len(recent)):.4f} "
          f"(mean of the last {len(recent)}){val}; {result.seconds:.0f} s")
    print(f"snapshot {result.snapshot}")
    if result.stopped_by is not None:
        return 128 + result.stopped_by
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Train a Caffe solver from Python: a progress bar, snapshots, resume, a loss-curve plot.

    .venv/bin/python examples/train.py --solver prototxt/focal_solver.prototxt
    .venv/bin/python examples/train.py --solver prototxt/focal_solver.prototxt \\
        --resume runs/focal/focal_iter_500.solverstate

What it does beyond ``caffe train``:
- a tqdm progress bar with the running training loss (Caffe's ``average_loss`` window) and the
  latest validation figures;
- the validation pass (the solver's ``test_iter`` batches every ``test_interval`` iterations)
  run from Python, so its figures, averaged over the batches as Caffe does, are kept;
- snapshots every ``snapshot`` iterations (Caffe's own), after the last iteration, and on
  SIGINT or SIGTERM: the current iteration finishes, a snapshot is written, and the script
  exits with status 130 or 143; ``--resume`` continues from a ``.solverstate``;
- ``PREFIX_history.json`` (per-iteration loss, validation figures) and ``PREFIX_loss.png``
  next to the snapshots (``PREFIX`` is the solver's ``snapshot_prefix``), kept across resumes.

Paths in the solver are read from the working directory, as the ``caffe`` tool does; run it
from the repository root for the shipped prototxt/. CPU mode. ``OPENBLAS_NUM_THREADS`` is 1
unless set, so runs repeat to the bit on any machine.
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import List, Optional

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # must precede `import caffe` (OpenBLAS reads it once)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class History:
    """Per iteration: ``loss`` (the training loss of iteration ``start + i``); per validation: a dict."""
    start: int = 0
    loss: List[float] = field(default_factory=list)
    val: List[dict] = field(default_factory=list)     # {"iter": i, "loss": ..., "mAP": ..., ...}

    def truncate(self, iteration):
        """Keep what happened before ``iteration`` (when resuming from a snapshot taken there)."""
        self.loss = self.loss[:max(0, iteration - self.start)]
        self.val = [v for v in self.val if v["iter"] <= iteration]

    def save(self, path):
        with open(path, "w") as handle:
            json.dump({"start": self.start, "loss": self.loss, "val": self.val}, handle)

    @classmethod
    def load(cls, path):
        with open(path) as handle:
            data = json.load(handle)
        return cls(data["start"], data["loss"], data["val"])


@dataclass
class Result:
    iterations: int                 # the solver's iteration at the end
    history: History
    snapshot: Optional[str]         # the last .solverstate written
    seconds: float                  # time spent in training and validation steps
    stopped_by: Optional[int] = None    # the signal that stopped training, if one did


def read_solver(path):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    param = caffe_pb2.SolverParameter()
    with open(path) as handle:
        text_format.Merge(handle.read(), param)
    return param


def _solver_without_tests(param):
    """A copy of the solver file whose tests never come: the validation runs from Python.

    (Caffe wants ``test_interval > 0`` when the net has a TEST phase.)
    """
    from google.protobuf import text_format
    copy = type(param)()
    copy.CopyFrom(param)
    copy.test_interval = 2 ** 31 - 1
    copy.test_initialization = False
    handle = tempfile.NamedTemporaryFile("w", suffix="_solver.prototxt", delete=False)
    with handle:
        handle.write(text_format.MessageToString(copy))
    return handle.name


def net_loss(net):
    """The loss Caffe minimises: the sum of ``loss_weight * top`` over the net's loss tops."""
    return sum(float(weight) * float(net.blobs[name].data.sum())
               for name, weight in zip(net.blobs.keys(), net._blob_loss_weights) if weight)


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
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _format(values):
    return " ".join(f"{k} {v:.3f}" for k, v in values.items() if k != "iter")


def train(solver_path, resume=None, weights=None, until=None, progress=True, desc=None, log=print):
    """Train with pycaffe; returns a ``Result``. ``until``: stop at this iteration (default max_iter)."""
    import caffe
    from tqdm import tqdm
    caffe.set_mode_cpu()
    param = read_solver(solver_path)
    prefix = param.snapshot_prefix
    if not prefix:
        raise ValueError(f"{solver_path}: set snapshot_prefix (where snapshots, history and plot go)")
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)   # Caffe refuses a missing folder
    temporary = _solver_without_tests(param)
    try:
        solver = caffe.get_solver(temporary)
    finally:
        os.unlink(temporary)
    history_path = f"{prefix}_history.json"
    history = History()
    if resume:
        solver.restore(resume)
        if os.path.isfile(history_path):
            history = History.load(history_path)
            history.truncate(solver.iter)
        else:
            history = History(start=solver.iter)
    elif weights:
        solver.net.copy_from(weights)
    end = min(param.max_iter, until or param.max_iter)
    test_net = solver.test_nets[0] if len(solver.test_nets) else None
    test_iter = param.test_iter[0] if param.test_iter else 0
    window = max(1, param.average_loss)

    stop = []
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in STOP_SIGNALS}
    desc = desc or os.path.basename(prefix)
    log(f"{desc}: training from iteration {solver.iter} to {end}" + (f", resumed from {resume}" if resume else ""),
        flush=True)
    snapshot_at = solver.iter if resume else None      # the iteration of the latest snapshot on disk
    started = time.perf_counter()
    try:
        with tqdm(total=end, initial=solver.iter, desc=desc, unit="it",
                  disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
            while solver.iter < end and not stop:
                solver.step(1)
                history.loss.append(net_loss(solver.net))
                bar.update(1)
                recent = history.loss[-window:]
                postfix = f"loss {sum(recent) / len(recent):.4f}"
                if test_net is not None and param.test_interval and (
                        solver.iter % param.test_interval == 0 or solver.iter == end):
                    history.val.append({"iter": solver.iter, **validate(test_net, solver.net, test_iter)})
                if history.val:
                    postfix += f" | val@{history.val[-1]['iter']} " + _format(history.val[-1])
                bar.set_postfix_str(postfix, refresh=False)
                if param.snapshot and solver.iter % param.snapshot == 0:
                    snapshot_at = solver.iter      # Caffe has just written a snapshot: keep the history with it
                    history.save(history_path)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    seconds = time.perf_counter() - started
    if snapshot_at != solver.iter:
        solver.snapshot()
    snapshot = f"{prefix}_iter_{solver.iter}.solverstate"
    history.save(history_path)
    plot_history(history, f"{prefix}_loss.png", os.path.basename(prefix))
    if stop:
        log(f"{desc}: stopped by signal {stop[0]} at iteration {solver.iter}; resume with --resume {snapshot}",
            flush=True)
    return Result(solver.iter, history, snapshot, seconds, stop[0] if stop else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--solver", required=True, help="solver prototxt")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="SOLVERSTATE", help="continue from this snapshot")
    start.add_argument("--weights", metavar="CAFFEMODEL", help="start from these weights (fine-tuning)")
    parser.add_argument("--until", type=int, metavar="ITER", help="stop at this iteration (default: max_iter)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="show Caffe's own log")
    args = parser.parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("GLOG_minloglevel", "2")
    for option in ("solver", "resume", "weights"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            parser.error(f"--{option} {path!r} does not exist")
    result = train(args.solver, args.resume, args.weights, args.until, progress=not args.no_progress)
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

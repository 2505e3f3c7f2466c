#!/usr/bin/env python3
"""The demo: three losses on an imbalanced multi-label task, trained and scored in a few minutes on a CPU.

    .venv/bin/python examples/demo.py                       # what `make demo` runs
    .venv/bin/python examples/demo.py --quick --out /tmp/d  # a smoke run of the same steps

1. Makes the bundled data (``examples/digits_data.py``): 32x32 canvases with 1 to 4 of scikit-learn's
   handwritten digits; labels the digits present; digits 7, 8, 9 are rare.
2. Writes the nets (``examples/make_nets.py``, the same as prototxt/ but for paths) and trains
   each loss for a fixed budget: sigmoid cross-entropy (``SigmoidFocalLoss`` with gamma 0), the
   focal loss (gamma 2, alpha 0.75) and the multi-label softmax loss. ``--trainer pycaffe``
   (default) trains with ``examples/train.py``; ``--trainer cli`` with ``caffe train``.
3. Scores each with the functions behind the ``caffe-layers`` tool: per-class thresholds
   calibrated for F1 on the validation set (``decoding.calibrate_thresholds``, what
   ``caffe-layers calibrate`` runs), then AP, F1, precision and recall on the test set
   (``metrics.evaluate``, what ``caffe-layers evaluate`` runs).
4. Prints one table, and the ``caffe-layers evaluate`` command that gives the same figures for
   a variant; writes under ``--out`` (default runs/): results.md, results.json,
   loss_curves.png, per_class_ap.png, precision_recall.png, and per variant its snapshots,
   history, loss plot and thresholds.json.

Deterministic: the data follow one seed, the solvers have ``random_seed``, Caffe runs on the
CPU with one OpenBLAS thread (``OPENBLAS_NUM_THREADS=1`` unless set). Same machine, same numbers.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before caffe is imported, here or in a child
os.environ.setdefault("GLOG_minloglevel", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import numpy as np  # noqa: E402

import digits_data as digits  # noqa: E402
import machine  # noqa: E402
import make_nets  # noqa: E402
import train as pytrain  # noqa: E402
from caffe_layers.files import save_figure, write_text  # noqa: E402

RARE = digits.DigitsSpec().rare_digits


@dataclass(frozen=True)
class Setting:
    sizes: tuple                     # train, val, test samples
    schedule: make_nets.Schedule


FULL = Setting((6000, 1000, 1000), make_nets.Schedule())
QUICK = Setting((256, 200, 200), make_nets.Schedule(max_iter=20, batch_size=32, val_size=200, test_interval=10,
                                                    snapshot=10, display=5))


def tool(name):
    """A console tool of this environment (next to the interpreter), else the one on PATH."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def evaluate_command(name, net_dir, data_dir, weights, out):
    """The ``caffe-layers evaluate`` command line that scores variant ``name`` as the table does."""
    import shlex
    folder = os.path.join(out, name)
    argv = [tool("caffe-layers"), "evaluate", "--model", os.path.join(net_dir, f"{name}_deploy.prototxt"),
            "--weights", weights, "--data", os.path.join(data_dir, "test.h5"),
            "--thresholds", os.path.join(folder, "thresholds.json"),
            "--plot", os.path.join(folder, "precision_recall.png")]
    return " ".join(map(shlex.quote, argv))


# ---------------------------------------------------------------- data and nets

def read_json(path):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def make_data(out, sizes, log):
    """Make the data unless out/digits already holds the same (sizes and spec recorded in data.json)."""
    folder = os.path.join(out, "digits")
    stamp = os.path.join(folder, "data.json")
    wanted = {"sizes": list(sizes), "spec": repr(digits.DigitsSpec()),
              "files": [os.path.join(folder, f"{s}.h5") for s in digits.SPLITS]}
    if read_json(stamp) == wanted and all(map(os.path.isfile, wanted["files"])):
        log(f"data: reusing {folder}")
    else:
        digits.make_digits(folder, sizes)
        write_text(stamp, json.dumps(wanted))
    counts = digits.label_counts(os.path.join(folder, "train.h5"))
    log(f"data: {sizes[0]} train / {sizes[1]} val / {sizes[2]} test canvases of 1-4 digits; "
        f"train positives per digit 0-9: {' '.join(map(str, counts))} (rare: {', '.join(map(str, RARE))})")
    return folder


def write_nets(out, data_dir, schedule, variants):
    net_dir = os.path.join(out, "nets")
    files = make_nets.generate(net_dir, data_dir, out, schedule, variants=variants, with_snippets=False)
    make_nets.write(files, net_dir)
    for name in variants:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    return net_dir


# ---------------------------------------------------------------- training

@dataclass
class Trained:
    weights: str
    final_loss: float        # the mean training loss over the solver's last average_loss iterations
    seconds: float
    curve: tuple             # (iterations, training loss), smoothed as final_loss
    val: list                # [{"iter": i, "loss": ..., "mAP": ...}, ...]


def train_pycaffe(solver, schedule, desc, progress):
    result = pytrain.train(solver, progress=progress, desc=desc)
    if result.stopped_by is not None:
        sys.exit(128 + result.stopped_by)
    loss = np.asarray(result.history.loss)
    window = schedule.display
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    iters = np.arange(window, len(loss) + 1)
    prefix = result.snapshot[:-len(".solverstate")]
    return Trained(prefix + ".caffemodel", float(loss[-window:].mean()), result.seconds,
                   (iters.tolist(), smooth.tolist()), result.history.val)


DISPLAY = re.compile(r"Iteration (\d+)(?: \(.*?\))?, loss = (\S+)")
TESTING = re.compile(r"Iteration (\d+), Testing net")
TEST_OUTPUT = re.compile(r"Test net output #\d+: (\S+) = (\S+)")


def train_cli(solver, schedule, desc, progress, prefix):
    """``caffe train``, its log parsed for the progress bar, the loss curve and the validation figures."""
    from tqdm import tqdm
    argv = [tool("caffe"), "train", "--solver", solver]
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    iters, losses, val = [], [], []
    started = time.perf_counter()
    with open(prefix + "_caffe.log", "w") as log, \
            tqdm(total=schedule.max_iter, desc=desc, unit="it", disable=not progress, dynamic_ncols=True) as bar:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        for line in process.stderr:
            log.write(line)
            if match := DISPLAY.search(line):
                iteration, loss = int(match.group(1)), float(match.group(2))
                if not iters or iteration > iters[-1]:
                    iters.append(iteration)
                    losses.append(loss)
                bar.update(iteration - bar.n)
                bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            elif match := TESTING.search(line):
                val.append({"iter": int(match.group(1))})
            elif (match := TEST_OUTPUT.search(line)) and val:
                val[-1][match.group(1)] = float(match.group(2))
        status = process.wait()
    seconds = time.perf_counter() - started
    if status != 0:
        sys.exit(f"demo: `{' '.join(argv)}` failed (status {status}); see {prefix}_caffe.log")
    return Trained(f"{prefix}_iter_{schedule.max_iter}.caffemodel", losses[-1], seconds, (iters, losses), val)


# ---------------------------------------------------------------- scoring

def probabilities(net, h5_path):
    """The deploy net's ``prob`` (it ends in Sigmoid or Softmax) for every sample of an HDF5 file, and its labels."""
    import h5py
    with h5py.File(h5_path, "r") as handle:
        x, labels = np.asarray(handle["data"]), np.asarray(handle["label"])
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    return net.forward()["prob"].astype(np.float64), labels


def score(name, net_dir, data_dir, trained, out):
    """Thresholds for F1 on the validation set, then the test set's figures: the functions that
    ``caffe-layers calibrate`` and ``caffe-layers evaluate`` run, on the same deploy net and weights."""
    import caffe
    from caffe_layers import decoding, metrics
    from caffe_layers.caffemodel import check_weights
    deploy = os.path.join(net_dir, f"{name}_deploy.prototxt")
    net = caffe.Net(deploy, caffe.TEST)
    try:
        check_weights(net, trained.weights, option="weights")
    except ValueError as error:
        sys.exit(f"demo: {name}: {error}")
    net.copy_from(trained.weights)
    val_probs, val_labels = probabilities(net, os.path.join(data_dir, "val.h5"))
    calibration = decoding.calibrate_thresholds(val_probs, val_labels == 1, "f1")
    decoding.save_thresholds(os.path.join(out, name, "thresholds.json"), calibration.thresholds, method="f1")
    probs, labels = probabilities(net, os.path.join(data_dir, "test.h5"))
    result = metrics.evaluate(probs, labels, calibration.thresholds)
    micro = metrics.pr_curves(probs, labels == 1)["micro"]
    return {"variant": name, "final_loss": trained.final_loss, "mAP": result["overall"]["mAP"],
            "macro_f1": result["overall"]["macro_f1"], "rare_ap": float(np.mean(result["ap"][list(RARE)])),
            "seconds": trained.seconds, "ap": result["ap"].tolist(), "f1": result["f1"].tolist(),
            "thresholds": result["thresholds"].tolist(), "weights": trained.weights, "val": trained.val,
            "curve": trained.curve}, micro


def table(rows, variants):
    header = ["variant", "loss layer", "final loss", "test mAP", "macro F1", f"rare AP ({', '.join(map(str, RARE))})",
              "train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        v = variants[r["variant"]]
        lines.append(f"| {r['variant']} | {v.layer} {json.dumps(v.options)} | {r['final_loss']:.4f} | {r['mAP']:.4f} | "
                     f"{r['macro_f1']:.4f} | {r['rare_ap']:.4f} | {r['seconds']:.0f} s |")
    return "\n".join(lines)


README_BEGIN = "<!-- demo table: written by examples/demo.py --readme -->"
README_END = "<!-- end demo table -->"


def machine_line():
    """The machine and software the figures come from, in one line."""
    m = machine.describe()
    return f"{m['nproc']} CPU cores ({m['cpu']}), Python {m['python']}, numpy {m['numpy']}, one OpenBLAS thread"


def readme_block(path):
    """(text, begin, end) of ``path`` and its demo table block; exits with one line if it has none."""
    try:
        with open(path, encoding="utf-8") as handle:
            readme = handle.read()
    except OSError as error:
        raise SystemExit(f"demo: --readme {path!r} cannot be read: {error.strerror}")
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"demo: --readme {path!r} has no demo table block ({README_BEGIN} ... {README_END})")
    return readme, begin, end


def update_readme(path, text, minutes):
    """Replace the demo table between README_BEGIN and README_END in ``path`` (written atomically)."""
    readme, begin, end = readme_block(path)
    block = f"{README_BEGIN}\nMeasured on {machine_line()}; the demo took {minutes:.1f} minutes.\n\n{text}\n"
    write_text(path, readme[:begin] + block + readme[end:])


# ---------------------------------------------------------------- plots

def plot_losses(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.4), squeeze=False)
    for axis, r in zip(axes[0], rows):
        iters, loss = r["curve"]
        axis.plot(iters, loss, label="train")
        val = [v for v in r["val"] if "loss" in v]
        if val:
            axis.plot([v["iter"] for v in val], [v["loss"] for v in val], "o-", label="validation")
        axis.set(title=r["variant"], xlabel="iteration", ylabel="loss")
        axis.set_ylim(bottom=0)
        axis.legend()
    figure.suptitle("Loss per variant (each loss on its own scale)")
    figure.tight_layout()
    save_figure(figure, path, format="png")


def plot_ap(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(8, 4))
    classes = np.arange(len(rows[0]["ap"]))
    width = 0.8 / len(rows)
    for d in RARE:
        axis.axvspan(d - 0.45, d + 0.45, color="0.92", zorder=0)
    for i, r in enumerate(rows):
        axis.bar(classes - 0.4 + width * (i + 0.5), np.nan_to_num(r["ap"]), width,
                 label=f"{r['variant']} (mAP {r['mAP']:.3f})", zorder=2)
    axis.set(xticks=classes, xlabel="digit (shaded: rare)", ylabel="test AP", ylim=(0, 1.02),
             title="Average precision per digit on the test set")
    figure.legend(loc="lower center", ncol=len(rows), fontsize="small", frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(figure, path, format="png")


def plot_precision_recall(rows, curves, path):
    """The micro-averaged precision-recall curve of each variant on the test set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(5, 4.5))
    for r, curve in zip(rows, curves):
        if curve is not None:
            precision, recall = curve
            axis.plot(recall, precision, label=f"{r['variant']} (mAP {r['mAP']:.3f})")
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title="Precision-recall on the test set (all digits pooled)")
    axis.legend(loc="lower left")
    figure.tight_layout()
    save_figure(figure, path, format="png")


# ---------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs"), help="output folder (default: runs/)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK.sizes} samples, {QUICK.schedule.max_iter} iterations per variant")
    parser.add_argument("--trainer", choices=("pycaffe", "cli"), default="pycaffe",
                        help="examples/train.py (default) or the caffe tool")
    parser.add_argument("--variants", nargs="+", choices=list(make_nets.VARIANTS), default=list(make_nets.VARIANTS))
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--readme", metavar="PATH",
                        help="also write the table, the machine and the run time into this README's demo table "
                             "block (examples/README.md holds the committed one)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.readme:
        readme_block(args.readme)  # before the run, not after it
    setting = QUICK if args.quick else FULL
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    variants = {name: make_nets.VARIANTS[name] for name in args.variants}
    log = print

    import caffe
    caffe.set_mode_cpu()
    data_dir = make_data(out, setting.sizes, log)
    net_dir = write_nets(out, data_dir, setting.schedule, variants)
    log(f"nets: {net_dir}; {setting.schedule.max_iter} iterations of {setting.schedule.batch_size} per variant "
        f"with {args.trainer}")
    rows, curves = [], []
    for i, (name, variant) in enumerate(variants.items(), start=1):
        solver = os.path.join(net_dir, f"{name}_solver.prototxt")
        desc = f"[{i}/{len(variants)}] {name}"
        if args.trainer == "pycaffe":
            trained = train_pycaffe(solver, setting.schedule, desc, not args.no_progress)
        else:
            trained = train_cli(solver, setting.schedule, desc, not args.no_progress, os.path.join(out, name, name))
        log(f"{desc}: trained in {trained.seconds:.0f} s, final loss {trained.final_loss:.4f}; scoring")
        row, curve = score(name, net_dir, data_dir, trained, out)
        rows.append(row)
        curves.append(curve)

    text = table(rows, variants)
    plot_losses(rows, os.path.join(out, "loss_curves.png"))
    plot_ap(rows, os.path.join(out, "per_class_ap.png"))
    plot_precision_recall(rows, curves, os.path.join(out, "precision_recall.png"))
    write_text(os.path.join(out, "results.md"), text + "\n")
    write_text(os.path.join(out, "results.json"),
               json.dumps({"trainer": args.trainer, "quick": args.quick, "rows": rows}, indent=1) + "\n")
    total = time.perf_counter() - started
    log("")
    log(text)
    log("")
    log(f"final loss: mean training loss of the last {setting.schedule.display} iterations (each loss on its own "
        f"scale); mAP and rare AP on the test set; macro F1 at per-class thresholds calibrated on the validation set")
    log(f"wrote {out}/results.md, results.json, loss_curves.png, per_class_ap.png, precision_recall.png; per "
        f"variant: snapshots, history, loss plot, thresholds.json")
    last = rows[-1]
    log(f"the same figures, per class, and a precision-recall plot for {last['variant']} with the caffe-layers tool:")
    log("  " + evaluate_command(last["variant"], net_dir, data_dir, last["weights"], out))
    log(f"demo took {total / 60:.1f} min")
    if args.readme:
        update_readme(args.readme, text, total / 60)
        log(f"wrote the table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

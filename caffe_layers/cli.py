"""``caffe-layers``: run a trained multi-label net over a data set, batch by batch.

    caffe-layers calibrate     --model deploy.prototxt --weights net.caffemodel --data val.h5 -o thresholds.json
    caffe-layers evaluate      --model ... --weights ... --data test.h5 [--thresholds thresholds.json] [--plot pr.png]
    caffe-layers predict       --model ... --weights ... --data new.h5 [--thresholds F | --threshold T |
                               --top-k K | --mass M] -o predictions.jsonl
    caffe-layers class-weights --data train.h5 [--method effective_number] -o class_weights.json

Data sets are HDF5 files (``.h5``, ``.hdf5``) or NumPy ``.npz`` files holding the inputs under
``--data-key`` (default "data", shape ``(N, ...)`` as the net's input blob) and the multi-hot
labels under ``--label-key`` (default "label", ``(N, C)``).

Checked before anything is written (each mistake prints one line, ``caffe-layers COMMAND: error:
...``, on stderr and exits with status 2): the prototxt (layer types this Caffe knows, bottoms
made by an earlier layer), the net as Caffe builds it (in a child process, so that a Caffe abort
becomes a message), the weights against the net (every layer with parameters present, with
Caffe's shapes), the data (keys, shapes, finite values, 0/1 labels), the options (finite
thresholds, no contradictory options), and the outputs (never an input; written to a temporary
file and renamed into place). When the output blob is made by a ``Sigmoid`` or ``Softmax``
layer, the scores are already probabilities: ``--activation`` defaults to none and says so.
The full reference: docs/tool.md.
"""
import argparse
import csv
import io
import json
import math
import os
import sys

import numpy as np

from . import class_weights as cw
from . import decoding
from . import files
from . import metrics
from .tool import UsageError, import_tool, missing_module_message
from .tool.data import Dataset, existing
from .tool.net import load_net, run_net

DEFAULT_THRESHOLD = 0.5
MASS_SUM_TOLERANCE = 1e-3


def _note(args, message):
    sys.stderr.write(f"caffe-layers {args.command}: note: {message}\n")


def _announce_activation(args, loaded):
    if loaded.detected is not None and args.activation is None:
        name, kind = loaded.detected
        _note(args, f"the output blob {loaded.output!r} is made by the {kind} layer {name!r}: its scores are "
                    f"probabilities already, so --activation is none")


def _check_data_fits(dataset, loaded, need_labels=True):
    want, got = loaded.sample_shape(), tuple(dataset.data.shape[1:])
    if got != want:
        raise UsageError(f"data file {dataset.path!r}: {dataset.data_key!r} has samples of shape {got} but the "
                         f"net's input {loaded.input!r} takes {want}")
    if need_labels and dataset.labels.shape[1] != loaded.num_classes:
        raise UsageError(f"data file {dataset.path!r}: {dataset.label_key!r} has {dataset.labels.shape[1]} classes "
                         f"but the net's output {loaded.output!r} has {loaded.num_classes}")


def _class_names(args, num_classes, from_file=None):
    """Names from --classes (checked against those of a thresholds file), else the file's, else 0..C-1."""
    if getattr(args, "classes", None):
        with open(args.classes, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
        if len(names) != num_classes:
            raise UsageError(f"--classes {args.classes!r} has {len(names)} names but there are {num_classes} classes")
        repeated = [n for n in dict.fromkeys(names) if names.count(n) > 1]
        if repeated:
            raise UsageError(f"--classes {args.classes!r} names {repeated[0]!r} {names.count(repeated[0])} times; "
                             f"each class needs its own name")
        if from_file is not None and list(from_file) != names:
            c = next(i for i, (a, b) in enumerate(zip(names, from_file)) if a != b)
            raise UsageError(f"--classes {args.classes!r} and --thresholds {args.thresholds!r} disagree on class "
                             f"{c} ({names[c]!r} vs {from_file[c]!r}): the thresholds may be in another class "
                             f"order; calibrate again with these --classes, or leave out --classes")
        return names
    return list(from_file) if from_file else [str(c) for c in range(num_classes)]


def _thresholds(args, loaded):
    """(thresholds: float or (C,), names from the file or None) from --thresholds / --threshold."""
    if getattr(args, "thresholds", None):
        return decoding.load_thresholds(args.thresholds, loaded.num_classes, who="--thresholds",
                                        of=f"the net's output {loaded.output!r}")
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    _check_probability_option(args, loaded, "--threshold", threshold)
    return threshold, None


def _check_probability_option(args, loaded, option, value):
    if loaded.probabilities and not 0 <= value <= 1:
        why = (f"made by the {loaded.detected[1]} layer {loaded.detected[0]!r}" if loaded.detected else
               f"after --activation {loaded.activation}")
        raise UsageError(f"{option} {value:g}: the scores are probabilities ({why}), so a threshold outside [0, 1] "
                         f"predicts {'nothing' if value > 1 else 'every class'}; give a value in [0, 1]")


def _fmt(value, digits=3):
    return "n/a" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).rjust(w) if i else str(cell).ljust(w)
                       for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header] + rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- subcommands

def _prepare(args, need_labels=True):
    """The data set, the net (checked, with weights) and, for labelled data, the label masks."""
    dataset = Dataset(args.data, args.data_key, args.label_key, need_labels=need_labels)
    masks = dataset.valid_positive(args.ignore_label) if need_labels else (None, None)
    loaded = load_net(args, tuple(dataset.data.shape[1:]), len(dataset))
    _check_data_fits(dataset, loaded, need_labels)
    return dataset, loaded, masks


def cmd_calibrate(args):
    dataset, loaded, (valid, positive) = _prepare(args)
    _check_probability_option(args, loaded, "--default", args.default)
    names = _class_names(args, loaded.num_classes)
    scores = run_net(loaded, dataset, args.batch_size, "calibrate")
    _announce_activation(args, loaded)
    result = decoding.calibrate_thresholds(scores, positive, args.method, args.target_precision, valid,
                                           default=args.default)
    method = args.method if args.method == "f1" else f"precision>={args.target_precision}"
    decoding.save_thresholds(args.output, result.thresholds, names if args.classes else None, method)
    support = np.sum(positive if valid is None else positive & valid, axis=0)
    rows = [[names[c], f"{result.thresholds[c]:.4f}", _fmt(result.f1[c]), _fmt(result.precision[c]),
             _fmt(result.recall[c]), int(support[c]), result.note[c]] for c in range(len(names))]
    print(_table(["class", "threshold", "F1", "precision", "recall", "support", "note"], rows))
    print(f"wrote {len(names)} thresholds ({method}, on {len(dataset)} samples) to {args.output}")


def cmd_evaluate(args):
    dataset, loaded, _ = _prepare(args)
    thresholds, file_names = _thresholds(args, loaded)
    names = _class_names(args, loaded.num_classes, file_names)
    scores = run_net(loaded, dataset, args.batch_size, "evaluate")
    _announce_activation(args, loaded)
    result = metrics.evaluate(scores, dataset.labels, thresholds, ignore_label=args.ignore_label)
    overall = result["overall"]
    rows = [[names[c], _fmt(result["ap"][c]), _fmt(result["f1"][c]), _fmt(result["precision"][c]),
             _fmt(result["recall"][c]), int(result["support"][c])] for c in range(len(names))]
    rows.append(["macro", _fmt(overall["mAP"]), _fmt(overall["macro_f1"]), _fmt(overall["macro_precision"]),
                 _fmt(overall["macro_recall"]), int(result["support"].sum())])
    rows.append(["micro", "", _fmt(overall["micro_f1"]), _fmt(overall["micro_precision"]),
                 _fmt(overall["micro_recall"]), int(result["support"].sum())])
    print(_table(["class", "AP", "F1", "precision", "recall", "support"], rows))
    where = args.thresholds or f"threshold {thresholds}"
    print(f"mAP {_fmt(overall['mAP'], 4)} over {int(np.sum(~np.isnan(result['ap'])))} classes with positives; "
          f"F1, precision, recall at {where}; {len(dataset)} samples")
    if args.plot:
        valid, positive = dataset.valid_positive(args.ignore_label)
        _plot(metrics.pr_curves(scores, positive, valid), names, result["ap"], overall["mAP"], args.plot)
        print(f"wrote the precision-recall plot to {args.plot}")


def _plot_format(path):
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    return ext or "png"


def _check_plot_path(path):
    """The plot's format (from its extension; none: png) must be one matplotlib writes."""
    import_tool("matplotlib")
    from matplotlib.backend_bases import FigureCanvasBase
    fmt = _plot_format(path)
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise UsageError(f"--plot {path!r}: matplotlib cannot write .{fmt} files; end the name in one of "
                         f"{', '.join('.' + f for f in sorted(supported))}")


def _plot(curves, names, ap, mean_ap, path):
    matplotlib = import_tool("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6, 5))
    for c, (precision, recall) in ((k, v) for k, v in curves.items() if k != "micro"):
        label = f"{names[c]} (AP {_fmt(ap[c])})" if len(names) <= 10 else None
        axes.plot(recall, precision, lw=1, alpha=0.7, label=label, drawstyle="steps-post")
    if curves["micro"] is not None:
        precision, recall = curves["micro"]
        axes.plot(recall, precision, color="black", lw=2, label="micro-average", drawstyle="steps-post")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title=f"Precision-recall (mAP {_fmt(mean_ap)})")
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    files.save_figure(figure, path, format=_plot_format(path))


def _join(values):
    """A list as one CSV field: its items joined by ';' with the csv module's quoting (read back
    with ``next(csv.reader([field], delimiter=';'))``)."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=";", lineterminator="").writerow(values)
    return buffer.getvalue()


def cmd_predict(args):
    dataset, loaded, _ = _prepare(args, need_labels=False)
    file_names = thresholds = None
    if args.top_k is not None:
        if args.top_k > loaded.num_classes:
            raise UsageError(f"--top-k {args.top_k}: the net's output {loaded.output!r} has only "
                             f"{loaded.num_classes} classes")
    elif args.mass is None:
        thresholds, file_names = _thresholds(args, loaded)
    if args.max_count is not None and args.max_count > loaded.num_classes:
        raise UsageError(f"--max-count {args.max_count}: the net's output {loaded.output!r} has only "
                         f"{loaded.num_classes} classes")
    names = _class_names(args, loaded.num_classes, file_names)
    scores = run_net(loaded, dataset, args.batch_size, "predict")
    _announce_activation(args, loaded)
    if args.top_k is not None:
        mask, rule = decoding.top_k_mask(scores, args.top_k), f"top {args.top_k}"
    elif args.mass is not None:
        sums = scores.sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1) > MASS_SUM_TOLERANCE)
        if off.size:
            raise UsageError(f"--mass needs probabilities that sum to 1 for each sample, but sample {off[0]}'s sum "
                             f"to {sums[off[0]]:.4g} (activation {loaded.activation}); give --activation softmax "
                             f"(or a net that ends in Softmax), or decode with --threshold or --top-k")
        mask = decoding.cumulative_mass_mask(scores, args.mass, 1 if args.min_count is None else args.min_count,
                                             args.max_count)
        rule = f"cumulative mass {args.mass}"
    else:
        mask, rule = decoding.apply_thresholds(scores, thresholds), args.thresholds or f"threshold {thresholds}"
    fmt = _output_format(args)
    named = bool(args.classes or file_names)
    with files.atomic_output(args.output) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle) if fmt == "csv" else None
        if writer:
            writer.writerow(["index", "labels", "scores"])
        for i, chosen in enumerate(decoding.label_sets(mask)):
            chosen = sorted(chosen, key=lambda c: -scores[i, c])       # best first
            labels = [names[c] if named else c for c in chosen]
            values = [round(float(scores[i, c]), 6) for c in chosen]
            if writer:
                writer.writerow([i, _join(labels), _join(values)])
            else:
                handle.write(json.dumps({"index": i, "labels": labels, "scores": values}) + "\n")
    sizes = mask.sum(axis=1)
    print(f"wrote {len(dataset)} label sets ({rule}; {sizes.mean():.2f} labels on average, "
          f"{int((sizes == 0).sum())} empty) to {args.output} as {fmt}")


def _output_format(args):
    by_name = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(os.path.splitext(args.output)[1].lower())
    if args.format and by_name and args.format != by_name:
        raise UsageError(f"--format {args.format} contradicts -o {args.output!r}, a .{by_name} name; change one "
                         f"of them")
    return args.format or by_name or "jsonl"


def cmd_class_weights(args):
    dataset = Dataset(args.data, args.data_key, args.label_key, need_data=False)
    try:
        positives, valid = cw.label_counts(dataset.labels, args.ignore_label)
    except ValueError as error:
        raise UsageError(f"data file {args.data!r}: {args.label_key!r}: {error}") from None
    names = _class_names(args, len(positives))
    beta = 0.999 if args.beta is None else args.beta
    weights = cw.class_weights(positives, valid, args.method, beta, args.kind, args.min_count)
    cw.save_weights(args.output, weights)
    rows = [[names[c], int(positives[c]), int(valid[c]), f"{weights[c]:.4f}"] for c in range(len(weights))]
    print(_table(["class", "positives", "labelled", args.kind], rows))
    recipe = args.method + (f", beta {beta}" if args.method == "effective_number" else "")
    print(f"wrote {len(weights)} {args.kind} values ({recipe}) to {args.output}")


# ---------------------------------------------------------------- arguments

class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the tool's one-line form (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _finite_float(text):
    """argparse type: a finite number (nan and inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _data_args(parser, labels=True):
    parser.add_argument("--data", required=True, help="HDF5 (.h5, .hdf5) or .npz data set")
    parser.add_argument("--data-key", default="data", help="inputs, (N, ...) as the net's input (default: data)")
    if labels:
        parser.add_argument("--label-key", default="label", help="multi-hot labels, (N, C) (default: label)")
        parser.add_argument("--ignore-label", type=int,
                            help="label entries equal to it are left out (not 0 or 1, the label values)")
    else:
        parser.set_defaults(label_key="label", ignore_label=None)
    parser.add_argument("--classes", help="text file of class names, one a line (default: those of the "
                                          "--thresholds file, else 0..C-1)")


def _net_args(parser):
    parser.add_argument("--model", required=True, help="deploy prototxt (one Input layer feeds the data)")
    parser.add_argument("--weights", required=True,
                        help="trained weights: .caffemodel, or Caffe's HDF5 weights (.h5); every layer of the net "
                             "with parameters must be in it, with the net's shapes")
    parser.add_argument("--output-blob", help="blob with the (N, C) scores (default: the net's last output)")
    parser.add_argument("--activation", choices=decoding.ACTIVATIONS, default=None,
                        help="applied to the output blob. Default: none when the output blob is made by a Sigmoid "
                             "or Softmax layer (its scores are probabilities already; a note on stderr says so), "
                             "else sigmoid. sigmoid or softmax on such a blob is an error (squashed twice)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per forward pass (default: 64)")
    parser.add_argument("--gpu", type=int, metavar="ID", help="run on this GPU (default: CPU)")


def _decision_args(parser):
    parser.add_argument("--thresholds", metavar="FILE", help="per-class thresholds JSON (from calibrate)")
    parser.add_argument("--threshold", type=_finite_float, metavar="T",
                        help=f"one threshold for all classes (default: {DEFAULT_THRESHOLD}); in [0, 1] when the "
                             f"scores are probabilities")


def build_parser():
    parser = Parser(
        prog="caffe-layers", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a trained multi-label Caffe net over an HDF5 or .npz data set, batch by batch.",
        epilog=__doc__.split("\n\n", 1)[1].replace("``", "") + "\nEach command has --help.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("calibrate", help="per-class thresholds from a validation set -> JSON",
                            description="Choose per-class thresholds on a validation set and write them as JSON: "
                                        '{"thresholds": [...], "classes": [...], "method": ...}.')
    _net_args(p)
    _data_args(p)
    p.add_argument("--method", choices=decoding.CALIBRATION_METHODS, default="f1",
                   help="f1: maximise each class's F1; precision: lowest threshold reaching --target-precision")
    p.add_argument("--target-precision", type=_finite_float, metavar="P",
                   help="in (0, 1]; only with --method precision, which needs it")
    p.add_argument("--default", type=_finite_float, default=DEFAULT_THRESHOLD,
                   help=f"threshold of a class without positives (default: {DEFAULT_THRESHOLD})")
    p.add_argument("-o", "--output", default="thresholds.json", help="(default: thresholds.json)")
    p.set_defaults(run=cmd_calibrate)

    p = commands.add_parser("evaluate", help="per-class and overall AP, F1, precision, recall; PR plot",
                            description="Print per-class and overall AP, F1, precision, recall and support over "
                                        "the whole data set (scikit-learn), and plot precision-recall curves.")
    _net_args(p)
    _data_args(p)
    _decision_args(p)
    p.add_argument("--plot", default="precision_recall.png", metavar="PNG",
                   help="precision-recall plot; the format follows the extension (default: precision_recall.png; "
                        "'' for none)")
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser("predict", help="label sets for each sample -> JSON lines or CSV",
                            description="Decode each sample's label set and write it: JSON lines "
                                        '{"index": i, "labels": [...], "scores": [...]} or CSV index,labels,scores '
                                        "(each list one field, its items joined by ';' with CSV quoting), best "
                                        "first. Give at most one of --thresholds, --threshold, --top-k, --mass.")
    _net_args(p)
    _data_args(p, labels=False)
    _decision_args(p)
    p.add_argument("--top-k", type=int, metavar="K", help="the K best classes of each sample")
    p.add_argument("--mass", type=_finite_float, metavar="M",
                   help="the fewest classes whose probabilities sum to >= M, M in (0, 1]; the scores must sum to "
                        "1 (--activation softmax, or a net that ends in Softmax)")
    p.add_argument("--min-count", type=int, help="with --mass: at least this many (default: 1)")
    p.add_argument("--max-count", type=int, help="with --mass: at most this many (default: all)")
    p.add_argument("--format", choices=("jsonl", "csv"), help="(default: csv for a .csv output, else jsonl)")
    p.add_argument("-o", "--output", default="predictions.jsonl", help="(default: predictions.jsonl)")
    p.set_defaults(run=cmd_predict)

    p = commands.add_parser("class-weights", help="class_weights or alpha from label counts -> JSON list",
                            description="Count each class's positives in the labels and write a JSON list for a "
                                        "loss layer's class_weights (mean 1) or alpha (in [0, 1]).")
    _data_args(p)
    p.add_argument("--method", choices=cw.METHODS, default="inverse_frequency",
                   help="inverse_frequency: 1/freq; effective_number: (1-beta)/(1-beta^n) "
                        "(default: inverse_frequency)")
    p.add_argument("--beta", type=_finite_float, help="in [0, 1); only with effective_number (default: 0.999)")
    p.add_argument("--kind", choices=cw.KINDS, default="class_weights", help="(default: class_weights)")
    p.add_argument("--min-count", type=int, default=0, help="raise counts below it to it (say 1 for absent classes)")
    p.add_argument("-o", "--output", default="class_weights.json", help="(default: class_weights.json)")
    p.set_defaults(run=cmd_class_weights)
    return parser


def _option(name):
    return "--" + name.replace("_", "-")


def _check_options(args):
    """Option values and combinations (contradictory options are errors); the input files exist;
    the outputs are writable and are not inputs."""
    given = lambda name: getattr(args, name, None) is not None  # noqa: E731
    chosen = [o for o in ("thresholds", "threshold", "top_k", "mass") if given(o)]
    if len(chosen) > 1:
        raise UsageError(f"give one of --thresholds, --threshold, --top-k, --mass (got {', '.join(map(_option, chosen))})")
    if args.command == "predict":
        for option in ("min_count", "max_count"):
            if given(option) and not given("mass"):
                raise UsageError(f"{_option(option)} works only with --mass (the cumulative-mass decoding)")
    if args.command == "calibrate" and given("target_precision") and args.method != "precision":
        raise UsageError(f"--target-precision works only with --method precision (got --method {args.method})")
    if args.command == "class-weights" and given("beta") and args.method != "effective_number":
        raise UsageError(f"--beta works only with --method effective_number (got --method {args.method})")

    for option in ("batch_size", "top_k", "max_count"):
        if given(option) and getattr(args, option) < 1:
            raise UsageError(f"{_option(option)} must be >= 1 (got {getattr(args, option)})")
    if given("gpu") and args.gpu < 0:
        raise UsageError(f"--gpu must be a device number >= 0 (got {args.gpu})")
    if given("min_count") and args.min_count < 0:
        raise UsageError(f"--min-count must be >= 0 (got {args.min_count})")
    if args.command == "predict" and given("max_count") and args.max_count < (args.min_count or 1):
        raise UsageError(f"--max-count {args.max_count} is below --min-count {args.min_count or 1}")
    if given("mass") and not 0 < args.mass <= 1:
        raise UsageError(f"--mass must be in (0, 1] (got {args.mass})")
    if args.command == "calibrate" and args.method == "precision":
        if not given("target_precision"):
            raise UsageError("--method precision needs --target-precision P (0 < P <= 1)")
        if not 0 < args.target_precision <= 1:
            raise UsageError(f"--target-precision must be in (0, 1] (got {args.target_precision})")
    if given("beta") and not 0 <= args.beta < 1:
        raise UsageError(f"--beta must be in [0, 1) (got {args.beta})")
    if given("ignore_label") and args.ignore_label in (0, 1):
        raise UsageError(f"--ignore-label {args.ignore_label} would leave out every "
                         f"{'negative' if args.ignore_label == 0 else 'positive'} label; give the value that marks "
                         f"unknown entries in the data (such as -1 or 255)")
    if args.command != "class-weights" and args.data_key == args.label_key:
        raise UsageError(f"--data-key and --label-key both name {args.data_key!r}; the inputs and the labels are "
                         f"two arrays")

    inputs = {o: getattr(args, o.lstrip("-").replace("-", "_"), None)
              for o in ("--model", "--weights", "--data", "--thresholds", "--classes")}
    inputs = {o: p for o, p in inputs.items() if p}
    for option, path in inputs.items():
        existing(path, "data file" if option == "--data" else option)
    outputs = {"-o": getattr(args, "output", None), "--plot": getattr(args, "plot", None)}
    outputs = {o: p for o, p in outputs.items() if p}
    for option, path in outputs.items():
        files.check_output(option, path)
    files.refuse_overwriting_inputs(outputs, inputs)
    if "--plot" in outputs:
        _check_plot_path(outputs["--plot"])
    if args.command == "predict":
        _output_format(args)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        _check_options(args)
        args.run(args)
    except (ValueError, OSError) as error:   # UsageError, and the checks of the NumPy helpers
        sys.stderr.write(f"caffe-layers {args.command}: error: {error}\n")
        return 2
    except ImportError as error:
        message = missing_module_message(error)
        if message is None:
            raise
        sys.stderr.write(f"caffe-layers {args.command}: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"caffe-layers {args.command}: interrupted; no output file was changed\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

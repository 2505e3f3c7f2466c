"""``caffe-layers``: run a trained multi-label net over a data set, batch by batch.

    caffe-layers calibrate     --model deploy.prototxt --weights net.caffemodel --data val.h5 -o thresholds.json
    caffe-layers evaluate      --model ... --weights ... --data test.h5 [--thresholds thresholds.json] [--plot pr.png]
    caffe-layers predict       --model ... --weights ... --data new.h5 [--thresholds F | --threshold T |
                               --top-k K | --mass M] -o predictions.jsonl
    caffe-layers class-weights --data train.h5 [--method effective_number] -o class_weights.json

Data sets are HDF5 files (``.h5``, ``.hdf5``) or NumPy ``.npz`` files holding the inputs under
``--data-key`` (default "data", shape ``(N, ...)`` as the net's input blob) and the multi-hot
labels under ``--label-key`` (default "label", ``(N, C)``). Bad input prints one line,
``caffe-layers COMMAND: error: ...``, on stderr and exits with status 2.
"""
import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np

from . import class_weights as cw
from . import decoding
from . import metrics


class UsageError(ValueError):
    """Bad input: reported as one line, exit status 2."""


# ---------------------------------------------------------------- data

def _existing(path, what):
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path!r} does not exist")
    return path


class Dataset:
    """Inputs (read lazily for HDF5) and labels (read whole) of an HDF5 or .npz file."""

    def __init__(self, path, data_key, label_key, need_data=True, need_labels=True):
        _existing(path, "data file")
        if path.endswith(".npz"):
            try:
                self._file = np.load(path)
            except (OSError, ValueError) as error:
                raise UsageError(f"data file {path!r} is not a readable .npz file: {error}") from None
        elif path.endswith((".h5", ".hdf5")):
            import h5py
            try:
                self._file = h5py.File(path, "r")
            except OSError as error:
                raise UsageError(f"data file {path!r} is not a readable HDF5 file: {error}") from None
        else:
            raise UsageError(f"data file {path!r} must be HDF5 (.h5, .hdf5) or NumPy .npz")
        self.path = path
        self.data = self._get(data_key, "--data-key") if need_data else None
        self.labels = np.asarray(self._get(label_key, "--label-key")) if need_labels else None
        self.data_key, self.label_key = data_key, label_key
        size = len(self.data) if need_data else len(self.labels)
        if size == 0:
            raise UsageError(f"data file {path!r} is empty: "
                             f"{data_key if need_data else label_key!r} has 0 samples")
        if need_data and need_labels and len(self.labels) != len(self.data):
            raise UsageError(f"data file {path!r}: {label_key!r} has {len(self.labels)} rows but "
                             f"{data_key!r} has {len(self.data)}")
        if need_labels and self.labels.ndim != 2:
            raise UsageError(f"data file {path!r}: {label_key!r} must be (N, C) multi-hot labels, "
                             f"got shape {self.labels.shape}")

    def _get(self, key, option):
        if key not in self._file:
            raise UsageError(f"data file {self.path!r} has no {key!r} (it has: {', '.join(sorted(self._file))}); "
                             f"set {option}")
        return self._file[key]

    def __len__(self):
        return len(self.data) if self.data is not None else len(self.labels)

    def valid_positive(self, ignore_label):
        """Check the labels (0, 1 or ignore_label); return (valid or None, positive) masks."""
        try:
            cw.label_counts(self.labels, ignore_label)
        except ValueError as error:
            raise UsageError(f"data file {self.path!r}: {self.label_key!r}: {error}") from None
        valid = None if ignore_label is None else self.labels != ignore_label
        return valid, self.labels == 1


# ---------------------------------------------------------------- the net

def _import_caffe():
    os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's net-building log off the terminal
    import caffe
    return caffe


def _set_mode(caffe, gpu):
    if gpu is None:
        caffe.set_mode_cpu()
        return
    # a CPU-only Caffe aborts the process on set_device: try it in a child first
    probe = subprocess.run([sys.executable, "-c", f"import caffe; caffe.set_device({gpu}); caffe.set_mode_gpu()"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise UsageError(f"--gpu {gpu}: this Caffe cannot use GPU {gpu} (a CPU-only build, or no such device)")
    caffe.set_device(gpu)
    caffe.set_mode_gpu()


def load_net(args):
    """The deploy net with weights; returns (net, input blob name, output blob name)."""
    _existing(args.model, "--model")
    _existing(args.weights, "--weights")
    caffe = _import_caffe()
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    with open(args.model) as handle:
        try:  # a malformed prototxt would abort Caffe itself: parse it here first
            text_format.Merge(handle.read(), caffe_pb2.NetParameter())
        except text_format.ParseError as error:
            raise UsageError(f"--model {args.model!r} is not a valid net prototxt: {error}") from None
    _set_mode(caffe, args.gpu)
    net = caffe.Net(args.model, caffe.TEST)
    _check_weights(caffe_pb2, net, args.weights)
    net.copy_from(args.weights)
    if not net.inputs:
        raise UsageError(f"--model {args.model!r} has no Input layer to feed (write a deploy prototxt)")
    output = args.output_blob or net.outputs[-1]
    if output not in net.blobs:
        raise UsageError(f"--output-blob {output!r} is not a blob of the net (it has: {', '.join(net.blobs)})")
    return net, net.inputs[0], output


def _check_weights(caffe_pb2, net, path):
    """Caffe aborts the process on weights that do not fit the net: compare the shapes here first."""
    if path.endswith((".h5", ".hdf5")):
        return  # Caffe's HDF5 weights: left to Caffe
    from google.protobuf.message import DecodeError
    trained = caffe_pb2.NetParameter()
    with open(path, "rb") as handle:
        try:
            trained.ParseFromString(handle.read())
        except DecodeError:
            raise UsageError(f"--weights {path!r} is not a Caffe model (a binary NetParameter)") from None
    for layer in trained.layer:
        if layer.name in net.params and all(blob.HasField("shape") for blob in layer.blobs):
            theirs = [tuple(blob.shape.dim) for blob in layer.blobs]
            ours = [tuple(param.data.shape) for param in net.params[layer.name]]
            if theirs != ours:
                raise UsageError(f"--weights {path!r}: layer {layer.name!r} has parameters of shapes {theirs} "
                                 f"but the net's wants {ours}")


def run_net(net, input_blob, output_blob, dataset, batch_size, activation, desc):
    """Forward the whole data set; return the activated ``(N, C)`` float64 scores."""
    from tqdm import tqdm
    want = tuple(net.blobs[input_blob].data.shape[1:])
    got = tuple(dataset.data.shape[1:])
    if got != want:
        raise UsageError(f"data file {dataset.path!r}: {dataset.data_key!r} has samples of shape {got} but the "
                         f"net's input {input_blob!r} takes {want}")
    outputs = []
    with tqdm(total=len(dataset), desc=desc, unit="sample", disable=None) as progress:
        for start in range(0, len(dataset), batch_size):
            batch = np.asarray(dataset.data[start:start + batch_size], dtype=np.float32)
            blob = net.blobs[input_blob]
            if blob.data.shape[0] != len(batch):
                blob.reshape(*batch.shape)
                net.reshape()
            blob.data[...] = batch
            net.forward()
            scores = net.blobs[output_blob].data
            if scores.ndim != 2:
                raise UsageError(f"--output-blob {output_blob!r} has shape {scores.shape}, expected (N, C) scores")
            outputs.append(scores.astype(np.float64))
            progress.update(len(batch))
    return decoding.activate(np.concatenate(outputs), activation)


def _check_classes(dataset, scores, output_blob):
    if dataset.labels.shape[1] != scores.shape[1]:
        raise UsageError(f"data file {dataset.path!r}: {dataset.label_key!r} has {dataset.labels.shape[1]} classes "
                         f"but the net's output {output_blob!r} has {scores.shape[1]}")


def _class_names(args, num_classes, from_file=None):
    if getattr(args, "classes", None):
        with open(_existing(args.classes, "--classes")) as handle:
            names = [line.strip() for line in handle if line.strip()]
        if len(names) != num_classes:
            raise UsageError(f"--classes {args.classes!r} has {len(names)} names but there are {num_classes} classes")
        return names
    return from_file or [str(c) for c in range(num_classes)]


def _thresholds(args, num_classes, of):
    """(thresholds: float or (C,), names from the file or None) from --thresholds / --threshold."""
    if getattr(args, "thresholds", None):
        return decoding.load_thresholds(args.thresholds, num_classes, who="--thresholds", of=of)
    return args.threshold, None


def _fmt(value, digits=3):
    return "n/a" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).rjust(w) if i else str(cell).ljust(w)
                       for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
             for r in [header] + rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- subcommands

def cmd_calibrate(args):
    dataset = Dataset(args.data, args.data_key, args.label_key)
    net, input_blob, output_blob = load_net(args)
    scores = run_net(net, input_blob, output_blob, dataset, args.batch_size, args.activation, "calibrate")
    _check_classes(dataset, scores, output_blob)
    valid, positive = dataset.valid_positive(args.ignore_label)
    if args.method == "precision" and args.target_precision is None:
        raise UsageError("--method precision needs --target-precision P (0 < P <= 1)")
    result = decoding.calibrate_thresholds(scores, positive, args.method, args.target_precision, valid,
                                           default=args.default)
    names = _class_names(args, scores.shape[1])
    method = args.method if args.method == "f1" else f"precision>={args.target_precision}"
    decoding.save_thresholds(args.output, result.thresholds, names if args.classes else None, method)
    support = np.sum(positive if valid is None else positive & valid, axis=0)
    rows = [[names[c], f"{result.thresholds[c]:.4f}", _fmt(result.f1[c]), _fmt(result.precision[c]),
             _fmt(result.recall[c]), int(support[c]), result.note[c]] for c in range(len(names))]
    print(_table(["class", "threshold", "F1", "precision", "recall", "support", "note"], rows))
    print(f"wrote {len(names)} thresholds ({method}, on {len(dataset)} samples) to {args.output}")


def cmd_evaluate(args):
    dataset = Dataset(args.data, args.data_key, args.label_key)
    net, input_blob, output_blob = load_net(args)
    scores = run_net(net, input_blob, output_blob, dataset, args.batch_size, args.activation, "evaluate")
    _check_classes(dataset, scores, output_blob)
    valid, positive = dataset.valid_positive(args.ignore_label)
    thresholds, file_names = _thresholds(args, scores.shape[1], of=f"the net's output {output_blob!r}")
    names = _class_names(args, scores.shape[1], file_names)
    result = metrics.report(scores, positive, decoding.apply_thresholds(scores, thresholds), valid)
    overall = result["overall"]
    rows = [[names[c], _fmt(result["ap"][c]), _fmt(result["f1"][c]), _fmt(result["precision"][c]),
             _fmt(result["recall"][c]), int(result["support"][c])] for c in range(len(names))]
    rows.append(["macro", _fmt(overall["mAP"]), _fmt(overall["macro_f1"]), _fmt(overall["macro_precision"]),
                 _fmt(overall["macro_recall"]), int(result["support"].sum())])
    rows.append(["micro", "", _fmt(overall["micro_f1"]), _fmt(overall["micro_precision"]),
                 _fmt(overall["micro_recall"]), int(result["support"].sum())])
    print(_table(["class", "AP", "F1", "precision", "recall", "support"], rows))
    where = args.thresholds or f"threshold {args.threshold}"
    print(f"mAP {_fmt(overall['mAP'], 4)} over {int(np.sum(~np.isnan(result['ap'])))} classes with positives; "
          f"F1, precision, recall at {where}; {len(dataset)} samples")
    if args.plot:
        _plot(metrics.pr_curves(scores, positive, valid), names, result["ap"], overall["mAP"], args.plot)
        print(f"wrote the precision-recall plot to {args.plot}")


def _plot(curves, names, ap, mean_ap, path):
    import matplotlib
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
    figure.savefig(path, dpi=100)
    plt.close(figure)


def cmd_predict(args):
    dataset = Dataset(args.data, args.data_key, args.label_key, need_labels=False)
    net, input_blob, output_blob = load_net(args)
    scores = run_net(net, input_blob, output_blob, dataset, args.batch_size, args.activation, "predict")
    file_names = None
    if args.top_k is not None:
        mask, rule = decoding.top_k_mask(scores, args.top_k), f"top {args.top_k}"
    elif args.mass is not None:
        mask = decoding.cumulative_mass_mask(scores, args.mass, args.min_count, args.max_count)
        rule = f"cumulative mass {args.mass}"
    else:
        thresholds, file_names = _thresholds(args, scores.shape[1], of=f"the net's output {output_blob!r}")
        mask, rule = decoding.apply_thresholds(scores, thresholds), args.thresholds or f"threshold {args.threshold}"
    names = _class_names(args, scores.shape[1], file_names)
    fmt = args.format or ("csv" if args.output.endswith(".csv") else "jsonl")
    with open(args.output, "w", newline="") as handle:
        writer = csv.writer(handle) if fmt == "csv" else None
        if writer:
            writer.writerow(["index", "labels", "scores"])
        for i, chosen in enumerate(decoding.label_sets(mask)):
            chosen = sorted(chosen, key=lambda c: -scores[i, c])       # best first
            labels = [names[c] if args.classes or file_names else c for c in chosen]
            values = [round(float(scores[i, c]), 6) for c in chosen]
            if writer:
                writer.writerow([i, ";".join(map(str, labels)), ";".join(map(str, values))])
            else:
                handle.write(json.dumps({"index": i, "labels": labels, "scores": values}) + "\n")
    sizes = mask.sum(axis=1)
    print(f"wrote {len(dataset)} label sets ({rule}; {sizes.mean():.2f} labels on average, "
          f"{int((sizes == 0).sum())} empty) to {args.output} as {fmt}")


def cmd_class_weights(args):
    dataset = Dataset(args.data, args.data_key, args.label_key, need_data=False)
    try:
        positives, valid = cw.label_counts(dataset.labels, args.ignore_label)
    except ValueError as error:
        raise UsageError(f"data file {args.data!r}: {args.label_key!r}: {error}") from None
    weights = cw.class_weights(positives, valid, args.method, args.beta, args.kind, args.min_count)
    cw.save_weights(args.output, weights)
    names = _class_names(args, len(weights))
    rows = [[names[c], int(positives[c]), int(valid[c]), f"{weights[c]:.4f}"] for c in range(len(weights))]
    print(_table(["class", "positives", "labelled", args.kind], rows))
    recipe = args.method + (f", beta {args.beta}" if args.method == "effective_number" else "")
    print(f"wrote {len(weights)} {args.kind} values ({recipe}) to {args.output}")


# ---------------------------------------------------------------- arguments

def _data_args(parser, labels=True):
    parser.add_argument("--data", required=True, help="HDF5 (.h5, .hdf5) or .npz data set")
    parser.add_argument("--data-key", default="data", help="inputs, (N, ...) as the net's input (default: data)")
    if labels:
        parser.add_argument("--label-key", default="label", help="multi-hot labels, (N, C) (default: label)")
        parser.add_argument("--ignore-label", type=int, help="label entries equal to it are left out")
    else:
        parser.set_defaults(label_key="label")
    parser.add_argument("--classes", help="text file of class names, one a line (default: 0..C-1)")


def _net_args(parser):
    parser.add_argument("--model", required=True, help="deploy prototxt (an Input layer feeds the data)")
    parser.add_argument("--weights", required=True, help="trained .caffemodel")
    parser.add_argument("--output-blob", help="blob with the (N, C) scores (default: the net's last output)")
    parser.add_argument("--activation", choices=decoding.ACTIVATIONS, default="sigmoid",
                        help="applied to the output blob (default: sigmoid; none if the net ends in one)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per forward pass (default: 64)")
    parser.add_argument("--gpu", type=int, metavar="ID", help="run on this GPU (default: CPU)")


def _decision_args(parser):
    parser.add_argument("--thresholds", metavar="FILE", help="per-class thresholds JSON (from calibrate)")
    parser.add_argument("--threshold", type=float, default=0.5, help="one threshold for all classes (default: 0.5)")


def build_parser():
    parser = argparse.ArgumentParser(
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
    p.add_argument("--target-precision", type=float, metavar="P", help="for --method precision")
    p.add_argument("--default", type=float, default=0.5, help="threshold of a class without positives (default: 0.5)")
    p.add_argument("-o", "--output", default="thresholds.json", help="(default: thresholds.json)")
    p.set_defaults(run=cmd_calibrate)

    p = commands.add_parser("evaluate", help="per-class and overall AP, F1, precision, recall; PR plot",
                            description="Print per-class and overall AP, F1, precision, recall and support over "
                                        "the whole data set (scikit-learn), and plot precision-recall curves.")
    _net_args(p)
    _data_args(p)
    _decision_args(p)
    p.add_argument("--plot", default="precision_recall.png", metavar="PNG",
                   help="precision-recall plot (default: precision_recall.png; '' for none)")
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser("predict", help="label sets for each sample -> JSON lines or CSV",
                            description="Decode each sample's label set and write it: JSON lines "
                                        '{"index": i, "labels": [...], "scores": [...]} or CSV index,labels,scores '
                                        "(labels and scores joined by ';'), best first.")
    _net_args(p)
    _data_args(p, labels=False)
    _decision_args(p)
    p.add_argument("--top-k", type=int, metavar="K", help="the K best classes of each sample")
    p.add_argument("--mass", type=float, metavar="M",
                   help="the fewest classes whose probabilities sum to >= M (use --activation softmax)")
    p.add_argument("--min-count", type=int, default=1, help="with --mass: at least this many (default: 1)")
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
    p.add_argument("--beta", type=float, default=0.999, help="for effective_number (default: 0.999)")
    p.add_argument("--kind", choices=cw.KINDS, default="class_weights", help="(default: class_weights)")
    p.add_argument("--min-count", type=int, default=0, help="raise counts below it to it (say 1 for absent classes)")
    p.add_argument("-o", "--output", default="class_weights.json", help="(default: class_weights.json)")
    p.set_defaults(run=cmd_class_weights)
    return parser


def _check_options(args):
    for option in ("batch_size", "top_k"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be >= 1 (got {value})")
    chosen = [o for o in ("thresholds", "top_k", "mass") if getattr(args, o, None) is not None]
    if len(chosen) > 1:
        given = ", ".join("--" + o.replace("_", "-") for o in chosen)
        raise UsageError(f"give one of --thresholds, --top-k, --mass (got {given})")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        _check_options(args)
        args.run(args)
    except (ValueError, OSError) as error:   # UsageError, and the checks of the NumPy helpers
        sys.stderr.write(f"caffe-layers {args.command}: error: {error}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Write the example nets of prototxt/ with caffe_layers.netspec: one CNN, three losses.

    .venv/bin/python examples/make_nets.py            # rewrite prototxt/ (the committed files)
    .venv/bin/python examples/make_nets.py --check    # exit 1 if prototxt/ differs from what it would write

For each variant V (sigmoid_ce, focal, softmax) it writes prototxt/V_train_val.prototxt (HDF5
data, the CNN, the Python loss; MultiLabelMetrics in the TEST phase), prototxt/V_solver.prototxt
and prototxt/V_deploy.prototxt (an Input layer and the probabilities, no labels), and the
copy-paste layer snippets under prototxt/snippets/. Paths in the files are relative to the
repository root, where the data is expected under runs/digits/ (`examples/digits_data.py`)
and snapshots go to runs/V/. examples/demo.py calls `generate` with its own paths.
"""
import argparse
import os
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]   # digits_data beside this script; caffe_layers from the checkout

import caffe  # noqa: E402
from caffe import layers as L, params as P  # noqa: E402

from caffe_layers import netspec  # noqa: E402
from caffe_layers.files import write_text  # noqa: E402
from digits_data import DigitsSpec, NUM_CLASSES  # noqa: E402

GENERATED = "written by examples/make_nets.py; edit that script, not this file"


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    layer: str                # SigmoidFocalLoss or MultiLabelSoftmaxLoss
    options: dict = field(default_factory=dict)
    activation: str = "sigmoid"
    threshold: float = 0.5    # for the TEST-phase F1 only: the demo calibrates per class after training


VARIANTS = {
    "sigmoid_ce": Variant("sigmoid_ce", "sigmoid cross-entropy (focal, gamma 0)", "SigmoidFocalLoss",
                          {"gamma": 0}),
    # alpha weighs each class's positives, 1 - alpha its negatives: positives are the minority of
    # every class here (at most 4 digits of 10), so alpha > 0.5
    "focal": Variant("focal", "focal loss (gamma 2, alpha 0.75)", "SigmoidFocalLoss",
                     {"gamma": 2, "alpha": 0.75}),
    # softmax probabilities share one unit of mass among 1-4 digits: each is about 1/4..1
    "softmax": Variant("softmax", "multi-label softmax", "MultiLabelSoftmaxLoss", {}, "softmax", 0.2),
}


@dataclass(frozen=True)
class Schedule:
    """What the solver runs: iterations, batch sizes, test and snapshot intervals."""
    max_iter: int = 2000
    batch_size: int = 64
    val_size: int = 1000
    test_batch_size: int = 100
    test_interval: int = 250
    snapshot: int = 500
    display: int = 25
    base_lr: float = 0.05
    random_seed: int = 1

    @property
    def test_iter(self):
        return max(1, self.val_size // self.test_batch_size)


def cnn(n, data):
    """Three 3x3 conv + ReLU stages (8, 16, 32 maps; 2x2 max-pools after the first two, 32 -> 8 pixels),
    a global max-pool (is a digit anywhere?), FC 64 + ReLU, FC 10: the scores."""
    bottom = data
    for i, maps in enumerate((8, 16, 32), start=1):
        conv = L.Convolution(bottom, num_output=maps, kernel_size=3, pad=1,
                             weight_filler=dict(type="msra"), bias_filler=dict(type="constant"))
        setattr(n, f"conv{i}", conv)
        setattr(n, f"relu{i}", L.ReLU(conv, in_place=True))
        bottom = (L.Pooling(conv, pool=P.Pooling.MAX, kernel_size=2, stride=2) if i < 3
                  else L.Pooling(conv, pool=P.Pooling.MAX, global_pooling=True))
        setattr(n, f"pool{i}", bottom)
    n.fc4 = L.InnerProduct(bottom, num_output=64, weight_filler=dict(type="msra"),
                           bias_filler=dict(type="constant"))
    n.relu4 = L.ReLU(n.fc4, in_place=True)
    n.score = L.InnerProduct(n.fc4, num_output=NUM_CLASSES, weight_filler=dict(type="xavier"),
                             bias_filler=dict(type="constant"))
    return n.score


def loss_layer(variant, score, label, **layer_args):
    helper = (netspec.sigmoid_focal_loss if variant.layer == "SigmoidFocalLoss"
              else netspec.multilabel_softmax_loss)
    return helper(score, label, loss_weight=1, **variant.options, **layer_args)


def train_val_net(variant, data_dir, schedule):
    """The TRAIN and TEST nets in one file: two HDF5Data layers, one per phase."""
    def data_layer(phase, split, batch_size):
        spec = caffe.NetSpec()
        spec.data, spec.label = L.HDF5Data(hdf5_data_param=dict(source=f"{data_dir}/{split}.txt",
                                                                batch_size=batch_size),
                                           include=dict(phase=phase), ntop=2)
        return spec.to_proto().layer[0]

    n = caffe.NetSpec()
    n.data, n.label = L.HDF5Data(hdf5_data_param=dict(source=f"{data_dir}/val.txt",
                                                      batch_size=schedule.test_batch_size),
                                 include=dict(phase=caffe.TEST), ntop=2)
    score = cnn(n, n.data)
    n.loss = loss_layer(variant, score, n.label)
    n.mAP, n.micro_f1 = netspec.multilabel_metrics(
        score, n.label, metrics=["mAP", "micro_f1"], activation=variant.activation,
        threshold=variant.threshold, name="metrics", include=dict(phase=caffe.TEST))
    proto = n.to_proto()
    train = data_layer(caffe.TRAIN, "train", schedule.batch_size)
    proto.layer.insert(0, train)
    proto.name = f"digits_{variant.name}"
    return proto


def deploy_net(variant, canvas):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, canvas, canvas]))
    score = cnn(n, n.data)
    n.prob = L.Sigmoid(score) if variant.activation == "sigmoid" else L.Softmax(score)
    proto = n.to_proto()
    proto.name = f"digits_{variant.name}_deploy"
    return proto


def solver_text(variant, net_path, run_dir, schedule):
    s = schedule
    return f"""# {variant.title}: SGD on the digit canvases; {GENERATED}
net: "{net_path}"
test_iter: {s.test_iter}  # x {s.test_batch_size} = the {s.val_size} validation canvases
test_interval: {s.test_interval}
test_initialization: false
base_lr: {s.base_lr}
lr_policy: "poly"  # base_lr (1 - iter/max_iter)^power: a fixed budget, ending at 0
power: 1
momentum: 0.9
weight_decay: 0.0005
max_iter: {s.max_iter}
display: {s.display}
average_loss: {s.display}
snapshot: {s.snapshot}
snapshot_prefix: "{run_dir}/{variant.name}/{variant.name}"
snapshot_after_train: true
type: "SGD"
solver_mode: CPU
random_seed: {s.random_seed}
"""


def snippets():
    """Copy-paste layers: {file name: text}."""
    n = caffe.NetSpec()
    n.score, n.label = L.Input(shape=[dict(dim=[64, NUM_CLASSES]), dict(dim=[64, NUM_CLASSES])], ntop=2)
    layers = {
        "sigmoid_focal_loss": ("Sigmoid focal loss (RetinaNet's gamma 2, alpha 0.25); "
                               "other keys: class_weights, normalization, ignore_label, check_finite",
                               lambda: netspec.sigmoid_focal_loss(n.score, n.label, gamma=2, alpha=0.25)),
        "sigmoid_cross_entropy": ("Sigmoid cross-entropy: the focal loss with gamma 0",
                                  lambda: netspec.sigmoid_focal_loss(n.score, n.label, gamma=0)),
        "asymmetric_loss": ("Asymmetric loss (Ridnik et al. 2021, the paper's recipe: gamma_neg 4, gamma_pos 0, "
                            "clip 0.05); other keys: detach_focal_weight, class_weights, normalization, ignore_label",
                            lambda: netspec.asymmetric_loss(n.score, n.label, gamma_neg=4, gamma_pos=0, clip=0.05)),
        "multilabel_softmax_loss": ("Softmax cross-entropy over multi-hot targets (each sample's positives share "
                                    "the target mass); other keys: label_smoothing, loss, class_weights, ...",
                                    lambda: netspec.multilabel_softmax_loss(n.score, n.label)),
        "multilabel_metrics": ("Metrics printed by `caffe train` at each test: one top per name in \"metrics\"",
                               lambda: netspec.multilabel_metrics(
                                   n.score, n.label, metrics=["mAP", "micro_f1", "macro_f1"],
                                   activation="sigmoid", threshold=0.5, name="metrics",
                                   include=dict(phase=caffe.TEST))),
    }
    out = {}
    for name, (comment, make) in layers.items():
        spec = caffe.NetSpec()
        spec.score, spec.label = n.score, n.label
        tops = make()
        if isinstance(tops, tuple):
            for top_name, top in zip(["mAP", "micro_f1", "macro_f1"], tops):
                setattr(spec, top_name, top)
        else:
            setattr(spec, "loss", tops)
        proto = spec.to_proto()
        del proto.layer[0]  # the Input layer stands for the net above the snippet
        out[f"snippets/{name}.prototxt"] = netspec.to_prototxt(
            proto, header=f"{comment}.\nBottoms: score (N, C) and label (N, C); {GENERATED}.")
    return out


def generate(net_dir, data_dir, run_dir, schedule=Schedule(), canvas=DigitsSpec.canvas, variants=VARIANTS,
             with_snippets=True):
    """Every file as {path relative to net_dir: text}; net_dir, data_dir, run_dir are the paths written
    into the files (solver's net, HDF5 list files, snapshots)."""
    files = {}
    for variant in variants.values():
        train_val = f"{variant.name}_train_val.prototxt"
        files[train_val] = netspec.to_prototxt(
            train_val_net(variant, data_dir, schedule),
            header=f"{variant.title}: train/val net; its data: examples/digits_data.py --out {data_dir}; {GENERATED}")
        files[f"{variant.name}_deploy.prototxt"] = netspec.to_prototxt(
            deploy_net(variant, canvas),
            header=f"{variant.title}: deploy net, {variant.activation} probabilities in 'prob'; {GENERATED}")
        files[f"{variant.name}_solver.prototxt"] = solver_text(variant, f"{net_dir}/{train_val}", run_dir, schedule)
    if with_snippets:
        files.update(snippets())
    return files


def write(files, out_dir):
    for name, text in files.items():
        path = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text(path, text)


def committed_files():
    """What prototxt/ holds: paths relative to the repository root."""
    return generate("prototxt", "runs/digits", "runs")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with prototxt/ instead of writing")
    args = parser.parse_args(argv)
    files = committed_files()
    out = os.path.join(ROOT, "prototxt")
    if args.check:
        stale = [name for name, text in files.items()
                 if not os.path.isfile(os.path.join(out, name)) or open(os.path.join(out, name)).read() != text]
        for name in stale:
            print(f"prototxt/{name} differs from what examples/make_nets.py writes", file=sys.stderr)
        return 1 if stale else 0
    write(files, out)
    print(f"wrote {len(files)} files under prototxt/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

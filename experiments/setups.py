"""The two experiments of docs/choosing-a-loss.md: their data, nets, variants and schedules.

1. ``multilabel``: the demo's task (``examples/digits_data.py``): 32x32 canvases holding 1 to 4
   different digits, labelled with the digits present; 7, 8 and 9 drawn 10 times less often.
   The demo's CNN (``examples/make_nets.cnn``) with six losses.
2. ``dense``: a RetinaNet-style dense task. 64x64 canvases holding 1 to 4 digits (repeats
   allowed); a small fully-convolutional net scores, for each cell of the 8x8 grid over the
   canvas (one cell per 8x8 pixels) and each digit, whether a digit of that class has its centre
   in that cell: 640 outputs per canvas, about 2.5 of them positive (0.4%). The score layer starts
   from a zero bias or from the prior initialisation (``caffe_layers.init``).

Each (variant, seed) pair is one training run. A seed draws everything that is random: the
source images' train/val/test split and the canvases (``DigitsSpec(seed=seed)``) and the solver's
``random_seed`` (``seed + 1``: seed 0 is the demo's data and initialisation). Every variant sees
the same data and starting weights for a given seed, so the seeds pair the variants.
"""
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, os.path.join(ROOT, "examples")):   # caffe_layers of this checkout; the demo's modules
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402

import digits_data as digits  # noqa: E402

NUM_CLASSES = digits.NUM_CLASSES
GRID = 8   # the dense net's output stride: one cell per 8x8 pixels (three 2x2 max-pools)


@dataclass(frozen=True)
class Variant:
    """One loss setting: the layer, its param_str options, the activation that turns its scores into
    probabilities (what the metrics layer's ``activation`` must be), and the score layer's bias."""
    name: str
    layer: str                      # SigmoidFocalLoss, AsymmetricLoss or MultiLabelSoftmaxLoss
    options: dict = field(default_factory=dict)
    activation: str = "sigmoid"
    prior: Optional[float] = None   # sigmoid(bias) = prior at the start; None: bias 0

    def settings(self):
        """The options as the tables print them: ``gamma 2, alpha 0.25``."""
        return ", ".join(f"{k} {v}" for k, v in self.options.items()) or "defaults"

    def init(self):
        return "zero" if self.prior is None else f"prior {self.prior:g}"


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum 0.9, the learning rate falling linearly to 0 (``poly``, power 1)."""
    max_iter: int
    batch_size: int
    base_lr: float
    weight_decay: float
    validations: int = 10           # validation passes, evenly spaced, the last at max_iter

    @property
    def val_interval(self):
        return max(1, self.max_iter // self.validations)


@dataclass(frozen=True)
class Setting:
    sizes: Tuple[int, int, int]     # train, val, test canvases
    schedule: Schedule
    seeds: Tuple[int, ...]


# ---------------------------------------------------------------- the learning rate

# One base_lr for every variant of both experiments (as RetinaNet uses one for all its losses): of
# the rates tried, the largest at which no variant collapsed in a pilot. A collapsed run has its
# validation AP at chance (the positive rate) from the first validation on and never recovers: all
# its scores are pushed negative within the first 200 iterations. The pilot trained the first
# iterations of the 3000-iteration schedule, validating every 100:
#   0.05 / 0.04, an earlier full run (2000 iterations; multi-label at 0.05, the demo's rate, dense at
#        0.04): multi-label sigmoid cross-entropy and focal loss without alpha collapsed on seed 1;
#        dense cross-entropy with the prior on seed 1, gamma 2 with alpha 0.5 on every seed, with
#        alpha 0.75 on seed 0, gamma 5 on seed 2.
#   0.03, those variants on seeds 0, 1, 2 for 400 iterations: dense gamma 2 with alpha 0.75
#        collapsed on every seed, with alpha 0.5 on seed 0 (the multi-label ones trained).
#   0.02, every variant on seeds 0, 1, 2 for 600 iterations: none collapsed, in either experiment,
#        but dense cross-entropy from a zero bias, which collapsed at 0.01 too (seeds 0 and 1, 400
#        iterations): the paper's finding that the prior initialisation is needed, not the rate's.
# At 0.02 every loss learns more slowly than at 0.04 / 0.05 (dense focal gamma 2, alpha 0.25: 0.53 to
# 0.64 validation AP over cells after 600 iterations, 0.89 and 0.92 after 3000 on seeds 1 and 2), so
# both experiments train 3000 iterations instead of 2000: about 26 minutes on 2 cores in all.
BASE_LR = 0.02
MAX_ITER = 3000

# ---------------------------------------------------------------- experiment 1: multi-label

FOCAL = "SigmoidFocalLoss"
MULTILABEL_VARIANTS = (
    Variant("sigmoid_ce", FOCAL, {"gamma": 0}),
    Variant("focal_g2", FOCAL, {"gamma": 2}),
    Variant("focal_g2_a0.25", FOCAL, {"gamma": 2, "alpha": 0.25}),     # RetinaNet's published setting
    Variant("focal_g2_a0.75", FOCAL, {"gamma": 2, "alpha": 0.75}),     # the demo's
    Variant("asymmetric", "AsymmetricLoss", {"gamma_neg": 4, "gamma_pos": 0, "clip": 0.05}),   # the paper's recipe
    Variant("softmax", "MultiLabelSoftmaxLoss", {}, activation="softmax"),
)

# ---------------------------------------------------------------- experiment 2: dense

PRIOR = 0.01


def _dense(name, gamma, alpha=None, prior=PRIOR):
    options = {"gamma": gamma}
    if alpha is not None:
        options["alpha"] = alpha
    options["normalization"] = "positives"
    return Variant(name, FOCAL, options, prior=prior)



DENSE_VARIANTS = (
    _dense("ce_zero_bias", 0, prior=None),
    _dense("ce_prior", 0),
    _dense("ce_a0.75", 0, 0.75),
    _dense("focal_g0_a0.25", 0, 0.25),
    _dense("focal_g0.5_a0.25", 0.5, 0.25),
    _dense("focal_g1_a0.25", 1, 0.25),
    _dense("focal_g2_a0.25", 2, 0.25),
    _dense("focal_g5_a0.25", 5, 0.25),
    _dense("focal_g2_a0.5", 2, 0.5),
    _dense("focal_g2_a0.75", 2, 0.75),
)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    variants: Tuple[Variant, ...]
    full: Setting
    quick: Setting
    spec: digits.DigitsSpec         # seed replaced per run
    metric: str                     # what the validation curve and the AP column measure

    def setting(self, quick):
        return self.quick if quick else self.full

    def spec_for(self, seed):
        return replace(self.spec, seed=seed)

    def make_data(self, sizes, seed):
        """``{split: (data float32, label float32)}`` for one seed; labels multi-hot ``(N, C)`` or, for
        the dense experiment, per cell ``(N, C, canvas/8, canvas/8)``."""
        spec = self.spec_for(seed)
        pools = digits.source_pools(spec.seed)
        out = {}
        for k, (split, n) in enumerate(zip(digits.SPLITS, sizes)):
            rng = np.random.default_rng([spec.seed, 2, k])      # as digits_data.make_digits draws them
            maker = digits.make_canvases if self.name == "multilabel" else dense_canvases
            out[split] = maker(int(n), pools[split], spec, rng)
        return out

    def net(self, variant, batch_size, *, train):
        """The NetParameter: Input layers (data; label when ``train``), the net, and the loss
        (``train``) or nothing (the scores in ``score``)."""
        import caffe
        from caffe import layers as L
        from caffe_layers import netspec
        from caffe_layers.registry import LAYERS
        spec = self.spec
        n = caffe.NetSpec()
        data_shape = dict(dim=[batch_size, 1, spec.canvas, spec.canvas])
        if train:
            cells = spec.canvas // GRID
            label_dim = [batch_size, NUM_CLASSES] + ([cells, cells] if self.name == "dense" else [])
            n.data, n.label = L.Input(shape=[data_shape, dict(dim=label_dim)], ntop=2)
        else:
            n.data = L.Input(shape=data_shape)
        score = multilabel_cnn(n, n.data) if self.name == "multilabel" else dense_fcn(n, n.data, variant.prior)
        if train:
            helper = getattr(netspec, LAYERS[variant.layer].netspec_helper)
            n.loss = helper(score, n.label, loss_weight=1, **variant.options)
        proto = n.to_proto()
        proto.name = f"{self.name}_{variant.name}_{'train' if train else 'score'}"
        return proto

    def flat(self, scores_or_labels):
        """``(N, C)`` as they are, or ``(N, C, H, W)`` -> ``(N H W, C)``: one row per cell."""
        a = np.asarray(scores_or_labels)
        if a.ndim == 2:
            return a
        return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def multilabel_cnn(n, data):
    import make_nets
    return make_nets.cnn(n, data)


def dense_fcn(n, data, prior):
    """Four 3x3 conv + ReLU stages (8, 16, 32, 32 maps; a 2x2 max-pool after each of the first three:
    64 -> 8 pixels, receptive field 38 pixels), then a 3x3 conv to 10 scores per cell, its weights
    Gaussian (std 0.01) and its bias 0 or ``prior_bias(prior)``, as RetinaNet's classification head."""
    from caffe import layers as L, params as P
    from caffe_layers.init import bias_filler
    bottom = data
    for i, maps in enumerate((8, 16, 32, 32), start=1):
        conv = L.Convolution(bottom, num_output=maps, kernel_size=3, pad=1,
                             weight_filler=dict(type="msra"), bias_filler=dict(type="constant"))
        setattr(n, f"conv{i}", conv)
        setattr(n, f"relu{i}", L.ReLU(conv, in_place=True))
        bottom = conv
        if i < 4:
            bottom = L.Pooling(conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
            setattr(n, f"pool{i}", bottom)
    n.score = L.Convolution(bottom, num_output=NUM_CLASSES, kernel_size=3, pad=1,
                            weight_filler=dict(type="gaussian", std=0.01),
                            bias_filler=dict(type="constant") if prior is None else bias_filler(prior))
    return n.score


def dense_canvases(n, pool, spec, rng):
    """``n`` canvases and their cell labels: ``(data (n, 1, H, W), label (n, 10, H/8, W/8))``, float32.

    Each canvas holds ``min_digits``..``max_digits`` digits (a digit may repeat) at random,
    non-overlapping places (``digits_data._places``); a digit's centre is at ``(y + 4, x + 4)``
    for its top-left corner ``(y, x)``, and its cell ``((y + 4) // 8, (x + 4) // 8)``. Two digits
    that do not overlap are 8 pixels apart on one axis, so no cell holds two centres.
    """
    cells = spec.canvas // GRID
    data = np.zeros((n, 1, spec.canvas, spec.canvas), np.float32)
    label = np.zeros((n, NUM_CLASSES, cells, cells), np.float32)
    weights = spec.digit_weights()
    for i in range(n):
        count = int(rng.integers(spec.min_digits, spec.max_digits + 1))
        chosen = rng.choice(NUM_CLASSES, size=count, replace=True, p=weights)
        for d, (y, x) in zip(chosen, digits._places(rng, count, spec.canvas)):
            data[i, 0, y:y + digits.DIGIT, x:x + digits.DIGIT] = pool[d][rng.integers(len(pool[d]))]
            label[i, d, (y + digits.DIGIT // 2) // GRID, (x + digits.DIGIT // 2) // GRID] = 1.0
    return data, label


EXPERIMENTS = {
    "multilabel": Experiment(
        "multilabel", "Multi-label classification, rare digits 7, 8, 9", MULTILABEL_VARIANTS,
        full=Setting((6000, 1000, 1000), Schedule(MAX_ITER, 64, BASE_LR, 5e-4), seeds=(0, 1, 2)),   # the demo's batch
        quick=Setting((128, 100, 100), Schedule(12, 16, BASE_LR, 5e-4, validations=3), seeds=(0, 1)),
        spec=digits.DigitsSpec(), metric="mAP"),
    "dense": Experiment(
        "dense", "Dense prediction: which digit has its centre in each cell", DENSE_VARIANTS,
        full=Setting((4000, 500, 1000), Schedule(MAX_ITER, 16, BASE_LR, 1e-4), seeds=(0, 1, 2)),
        quick=Setting((64, 40, 40), Schedule(12, 8, BASE_LR, 1e-4, validations=3), seeds=(0, 1)),
        spec=digits.DigitsSpec(canvas=64, rare_digits=(), rare_factor=1.0), metric="AP over cells"),
}

"""``MultiLabelMetrics``: multi-label metrics as tops of a TEST net, printed by ``caffe train``.

Use from prototxt, in the net that ``caffe train`` tests::

    layer {
      type: "Python" name: "metrics" bottom: "score" bottom: "label"
      top: "mAP" top: "micro_f1"                 # one top per metric, in the order of "metrics"
      python_param { module: "caffe_layers" layer: "MultiLabelMetrics"
                     param_str: '{"metrics": ["mAP", "micro_f1"], "activation": "sigmoid"}' }
      include { phase: TEST }
    }

Caffe averages each top over the ``test_iter`` batches of a test pass, so for mAP and the F1s
the printed figure is a mean of per-batch values, an estimate of the data-set value (a class
is ranked only within a batch). The exact figure: ``caffe-layers evaluate`` over the whole set.
"""
import caffe
import numpy as np

from . import metrics as m
from .config import MetricsConfig
from .decoding import activate, apply_thresholds, load_thresholds
from .layers import blob_shapes, check_finite_scores, reported
from .params import describe_bad


class MultiLabelMetrics(caffe.Layer):
    """Batch multi-label metrics; no gradient.

    Bottoms:
      0 scores  ``(N, C)``: the net's outputs, turned into probabilities by ``activation``
        (sigmoid | softmax over C | none).
      1 targets ``(N, C)``: multi-hot, 0 or 1, or ``ignore_label`` (those entries are left out).
    Tops: one ``()`` scalar per name in ``metrics``, in that order:
      mAP          mean over the classes with a positive in the batch of the average precision
                   (scikit-learn's ``average_precision_score``: ``sum_k (R_k - R_{k-1}) P_k``);
      micro_f1     ``2 TP / (2 TP + FP + FN)`` over all entries, predicting ``p >= threshold``;
      macro_f1     the mean over classes of the same, leaving out classes with neither a
                   positive nor a prediction;
      precision@k  per sample, the share of its ``k`` highest-scoring classes that are positive
                   (``min(k, C)`` for the denominator), averaged over samples;
      recall@k     per sample with a positive, the share of its positives among those ``k``.
      A metric that is undefined on a batch (say mAP with no positive at all) is 0.
    Backward writes nothing; zeros to a bottom's diff if Caffe asks for it. Bottoms are
    never written.

    param_str keys: activation (default "sigmoid"), metrics (default ["mAP"]), threshold
    (default 0.5, or the path of a thresholds JSON file, see ``caffe_layers.decoding``),
    k (default 1), ignore_label (default none).

    Caffe averages each top over the ``test_iter`` batches, so the printed mAP and F1s are
    means of batch values, estimates of the data-set figure; ``caffe-layers evaluate`` gives
    the exact one.
    """
    NAME = "MultiLabelMetrics"

    @reported
    def setup(self, bottom, top):
        self.config = MetricsConfig.from_param_str(self.param_str, self.NAME)
        if len(bottom) != 2:
            raise ValueError(f"{self.NAME}: expects 2 bottoms (scores, targets), got {len(bottom)}")
        names = self.config.metrics
        if len(top) != len(names):
            raise ValueError(f"{self.NAME}: expects one top per metric ({len(names)}: {', '.join(names)}), "
                             f"got {len(top)}")
        self._thresholds = None if isinstance(self.config.threshold, str) else self.config.threshold

    @reported
    def reshape(self, bottom, top):
        scores_shape, targets_shape = blob_shapes(bottom, self.NAME)
        if len(scores_shape) != 2:
            raise ValueError(f"{self.NAME}: bottom 0 (scores) must be (N, C), got shape {scores_shape}")
        if targets_shape != scores_shape:
            raise ValueError(f"{self.NAME}: bottom 1 (targets) must have the scores' shape {scores_shape}, "
                             f"got {targets_shape}")
        if isinstance(self.config.threshold, str) and (self._thresholds is None
                                                       or len(self._thresholds) != scores_shape[1]):
            self._thresholds, _ = load_thresholds(self.config.threshold, scores_shape[1],
                                                  who=f"{self.NAME}: 'threshold'", of="bottom 0 (scores)")
        for i in range(len(top)):
            top[i].reshape()

    @reported
    def forward(self, bottom, top):
        scores, targets = bottom[0].data, bottom[1].data
        valid = self._check(scores, targets)
        positive = targets == 1
        probs = activate(scores, self.config.activation)      # a float64 copy: bottoms stay as they are
        computed = {}
        if {"micro_f1", "macro_f1"} & set(self.config.metrics):
            counts = m.f1_counts(apply_thresholds(probs, self._thresholds), positive, valid)
            computed["micro_f1"], computed["macro_f1"] = m.micro_f1(*counts), m.macro_f1(*counts)
        if {"precision@k", "recall@k"} & set(self.config.metrics):
            computed["precision@k"], computed["recall@k"] = m.precision_recall_at_k(
                probs, positive, self.config.k, valid)
        if "mAP" in self.config.metrics:
            computed["mAP"] = m.nan_mean(m.average_precision(probs, positive, valid))
        for i, name in enumerate(self.config.metrics):
            value = computed[name]
            top[i].data[...] = 0.0 if np.isnan(value) else value

    def backward(self, top, propagate_down, bottom):
        for i in range(len(bottom)):
            if propagate_down[i]:
                bottom[i].diff[...] = 0

    def _check(self, scores, targets):
        """Raise on non-finite scores or targets other than 0, 1, ignore_label; return the valid mask."""
        check_finite_scores(self.NAME, scores)
        ignore = self.config.ignore_label
        valid = None if ignore is None else targets != ignore
        bad = (targets != 0) & (targets != 1)
        if valid is not None:
            bad &= valid
        if bad.any():
            allowed = "0 or 1" + ("" if ignore is None else f" or the ignore_label {ignore}")
            raise ValueError(f"{self.NAME}: bottom 1 (targets) must be {allowed}; {describe_bad(targets, bad)}")
        return valid

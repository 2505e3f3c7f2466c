"""The Caffe glue: ``caffe.Layer`` classes that check blobs and call the NumPy losses.

Use from prototxt::

    layer {
      type: "Python" name: "loss" bottom: "score" bottom: "label" top: "loss"
      python_param { module: "caffe_layers" layer: "SigmoidFocalLoss" param_str: '{"gamma": 2}' }
      loss_weight: 1  # a Python layer is not a LossLayer: Caffe counts its top as a loss only when told
    }

Every error is raised as ``ValueError`` (bad options, shapes or targets) or
``FloatingPointError`` (non-finite scores) with a message that names the layer, the key or
bottom, what was expected and what came; it is also printed to stderr, because the ``caffe``
tool reports a Python exception only as ``error_already_set``.
"""
import contextlib
import functools
import math
import sys
import traceback

import caffe
import numpy as np

from .asymmetric import asymmetric_loss
from .blocks import as_ncs
from .config import AsymmetricConfig, FocalConfig, SoftmaxConfig
from .focal import sigmoid_focal_loss
from .multilabel_softmax import is_index_target, multilabel_softmax_loss
from .params import describe_bad, first_index, per_class


def reported(method):
    """Print an exception's message and traceback to stderr, then let it propagate."""
    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except Exception as error:
            sys.stderr.write(f"caffe_layers: {type(error).__name__}: {error}\n{traceback.format_exc()}")
            sys.stderr.flush()
            raise
    return wrapper


def _sum_is_finite(array):
    """Whether every element is finite, from one reduction: a NaN or an infinity makes the sum
    non-finite. A non-finite sum of finite values (overflow) is settled by the exact check."""
    return math.isfinite(float(np.add.reduce(array, axis=None))) or bool(np.isfinite(array).all())


def check_finite_scores(name, scores, hint=""):
    """Raise ``FloatingPointError`` naming the count and the first of the non-finite scores, if any;
    the sum settles the common case in one pass (``_sum_is_finite``)."""
    if _sum_is_finite(scores):
        return
    bad = ~np.isfinite(scores)
    index = first_index(bad)
    raise FloatingPointError(f"{name}: bottom 0 (scores) has {int(bad.sum())} non-finite values, the first at "
                             f"index {index}: {float(scores[index])!r}{hint}")


def blob_shapes(bottom, name):
    """The bottoms' shapes; a blob with no elements is an error here, because Caffe aborts when
    its (absent) data is touched."""
    shapes = []
    for i in range(len(bottom)):
        shape = tuple(bottom[i].shape)
        if bottom[i].count == 0:
            raise ValueError(f"{name}: bottom {i} has shape {shape}, with no elements; a batch needs at "
                             f"least one sample (N >= 1) and every other axis >= 1")
        shapes.append(shape)
    return shapes


class LossLayer(caffe.Layer):
    """The Caffe side of every loss: bottoms (scores, targets[, weights]), tops (loss[, probabilities]).

    A subclass supplies:

    - ``NAME``: the layer's name in prototxt (``python_param { layer: NAME }``);
    - ``CONFIG``: its ``caffe_layers.config.LossConfig`` subclass, read from ``param_str``;
    - ``LOSS``: its NumPy function ``LOSS(scores, targets, *, weights, grad_out, prob_out,
      **config.kernel_options())`` returning sums with ``loss`` and ``valid`` (and ``positives``
      for ``normalization: positives``);
    - ``check_shapes(scores_shape, targets_shape, weights_shape)`` (weights_shape None without
      a third bottom) and ``check_targets(targets, scores_shape)``, raising ``ValueError``;
    - ``normalizer_count(scores_shape, sums)``: the count the summed loss is divided by.

    ``SigmoidLossLayer`` supplies the last three for element-wise losses of sigmoid scores.

    The gradient is computed with the loss in forward when the net trains (phase TRAIN), and on
    demand in backward otherwise, then scaled by ``top[0].diff`` (the loss weight) over the
    forward's normaliser.
    """
    NAME = None
    CONFIG = None
    LOSS = None

    @reported
    def setup(self, bottom, top):
        self.config = self.CONFIG.from_param_str(self.param_str, self.NAME)
        if len(bottom) not in (2, 3):
            raise ValueError(f"{self.NAME}: expects 2 or 3 bottoms (scores, targets[, weights]), got {len(bottom)}")
        if len(top) not in (1, 2):
            raise ValueError(f"{self.NAME}: expects 1 or 2 tops (loss[, probabilities]), got {len(top)}")
        self._grad = None
        self._grad_ready = False
        self._normalizer = 1.0
        self._loss_weight_checked = False

    @reported
    def reshape(self, bottom, top):
        shapes = blob_shapes(bottom, self.NAME)
        scores_shape = shapes[0]
        if len(scores_shape) < 2:
            raise ValueError(f"{self.NAME}: bottom 0 (scores) must be (N, C, ...), got shape {scores_shape}")
        self.check_shapes(scores_shape, shapes[1], shapes[2] if len(shapes) == 3 else None)
        if self._grad is None or self._grad.shape != scores_shape:
            self._grad = np.empty(scores_shape, dtype=np.float32)
        self._grad_ready = False
        top[0].reshape()  # a scalar, like Caffe's own loss layers
        if len(top) == 2:
            top[1].reshape(*scores_shape)

    @reported
    def forward(self, bottom, top):
        self._grad_ready = False
        want_grad = self.phase == caffe.TRAIN
        if want_grad and not self._loss_weight_checked:
            self._warn_without_loss_weight(top)
        loss, self._normalizer = self._run(bottom, top, want_grad)
        self._grad_ready = want_grad
        top[0].data[...] = loss / self._normalizer

    @reported
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            if not self._grad_ready:
                self._run(bottom, None, want_grad=True)
                self._grad_ready = True
            np.multiply(self._grad, top[0].diff.flat[0] / self._normalizer, out=bottom[0].diff)
        for i in range(1, len(bottom)):
            if propagate_down[i]:  # targets and weights get no gradient
                bottom[i].diff[...] = 0

    def _warn_without_loss_weight(self, top):
        """Caffe sets a loss top's diff to its loss_weight; a Python layer's default weight is 0,
        and then Caffe skips its backward and the net never learns from it."""
        self._loss_weight_checked = True
        if top[0].diff.flat[0] == 0:
            sys.stderr.write(
                f"caffe_layers: warning: {self.NAME} (param_str {self.param_str!r}) has no loss_weight, so "
                f"Caffe does not count its top as a loss and the net will not learn from it; add "
                f"'loss_weight: 1' to the layer (a Python layer is not a LossLayer)\n")
            sys.stderr.flush()

    def loss_sums(self, scores, targets, weights, grad_out, prob_out):
        return self.LOSS(scores, targets, weights=weights, grad_out=grad_out, prob_out=prob_out,
                         **self.config.kernel_options())

    def _run(self, bottom, top, want_grad):
        """Check the data, run the NumPy loss; return (summed loss, normaliser)."""
        scores = bottom[0].data
        targets = bottom[1].data
        weights = bottom[2].data if len(bottom) == 3 else None
        self.check_targets(targets, scores.shape)
        if weights is not None:
            self._check_weights(weights)
        checking = self.config.check_finite
        if checking:
            check_finite_scores(self.NAME, scores, ' (set "check_finite": false to skip this check)')
        prob_out = top[1].data if top is not None and len(top) == 2 else None
        grad_out = self._grad if want_grad else None
        # when checking, a non-finite result gets the clear error below rather than NumPy's warnings
        with np.errstate(invalid="ignore", over="ignore") if checking else contextlib.nullcontext():
            sums = self.loss_sums(scores, targets, weights, grad_out, prob_out)
        if checking and not math.isfinite(sums.loss):
            self._raise_overflow(scores, weights, "loss")
        if checking and grad_out is not None and not _sum_is_finite(grad_out):
            self._raise_overflow(scores, weights, "gradient")
        return sums.loss, float(max(1.0, self.normalizer_count(scores.shape, sums)))

    def _check_weights(self, weights):
        bad = ~(np.isfinite(weights) & (weights >= 0))
        if bad.any():
            raise ValueError(f"{self.NAME}: bottom 2 (weights) must be finite and >= 0; {describe_bad(weights, bad)}")

    def _raise_overflow(self, scores, weights, what):
        """The scores are finite but the loss or gradient is not: name what is large enough to overflow."""
        largest = np.unravel_index(int(np.argmax(np.abs(scores))), scores.shape)
        given = [name for name, value in (("bottom 2 (weights)", weights),
                                          ("'class_weights'", self.config.class_weights)) if value is not None]
        cause = (f"the largest |score| is {float(scores[largest]):.4g} at index {tuple(map(int, largest))}"
                 + (f"; or {' and '.join(given)} too large?" if given else ""))
        raise FloatingPointError(f"{self.NAME}: the {what} overflowed float32 although every score is finite: "
                                 f"{cause} (set \"check_finite\": false to skip this check)")


class SigmoidLossLayer(LossLayer):
    """An element-wise loss of sigmoid scores: targets in [0, 1] of the scores' shape, weights per
    sample ``(N,)`` or per element, per-class options, and the normalizations of ``_SigmoidConfig``."""

    def check_shapes(self, scores_shape, targets_shape, weights_shape):
        num_classes = scores_shape[1]
        if targets_shape != scores_shape:
            raise ValueError(f"{self.NAME}: bottom 1 (targets) must have the scores' shape {scores_shape}, "
                             f"got {targets_shape}")
        if weights_shape is not None and weights_shape not in ((scores_shape[0],), scores_shape):
            raise ValueError(f"{self.NAME}: bottom 2 (weights) must be ({scores_shape[0]},) or {scores_shape}, "
                             f"got {weights_shape}")
        if isinstance(getattr(self.config, "alpha", None), tuple):
            per_class(self.NAME, "alpha", self.config.alpha, num_classes)
        per_class(self.NAME, self.config.written("class_weights"), self.config.class_weights, num_classes)

    def check_targets(self, targets, scores_shape):
        low, high = targets.min(), targets.max()
        if low >= 0 and high <= 1:
            return
        bad = ~((targets >= 0) & (targets <= 1))
        if self.config.ignore_label is not None:
            bad &= targets != self.config.ignore_label
        if bad.any():
            allowed = "in [0, 1]" + ("" if self.config.ignore_label is None
                                     else f" or the ignore_label {self.config.ignore_label}")
            raise ValueError(f"{self.NAME}: bottom 1 (targets) must be {allowed}; {describe_bad(targets, bad)}")

    def normalizer_count(self, scores_shape, sums):
        return {"batch_size": scores_shape[0], "full": math.prod(scores_shape), "valid": sums.valid,
                "none": 1, "positives": sums.positives}[self.config.normalization]


class SigmoidFocalLoss(SigmoidLossLayer):
    """Sigmoid focal loss (Lin et al. 2017); with ``gamma: 0`` sigmoid cross-entropy.

    Bottoms:
      0 scores  ``(N, C, d1..dk)``: logits ``x``.
      1 targets ``(N, C, d1..dk)``: ``t`` in [0, 1] (multi-hot or soft), or ``ignore_label``.
      2 weights (optional) ``(N,)`` per sample or ``(N, C, d1..dk)`` per element, finite, >= 0.
    Tops:
      0 loss ``()``: ``sum(w alpha_t (1 - p_t)^gamma ce) / max(1, n)``, n per ``normalization``.
      1 probabilities (optional) ``(N, C, d1..dk)``: ``sigmoid(x)``; no gradient flows back from it.
    Backward writes to bottom 0
      ``top.diff * w alpha_t [(1-p_t)^gamma (p - t) + gamma (1-p_t)^(gamma-1) p (1-p) (1-2t) ce] / n``
    and zeros to the others when asked. See ``caffe_layers.focal`` for the formulas.

    param_str keys: gamma (alias focusing_parameter), alpha, class_weights (alias
    class_balances), normalization (batch_size | full | valid | none | positives),
    ignore_label, check_finite.
    """
    NAME = "SigmoidFocalLoss"
    CONFIG = FocalConfig
    LOSS = staticmethod(sigmoid_focal_loss)


class AsymmetricLoss(SigmoidLossLayer):
    """Asymmetric loss (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label Classification").

    Bottoms:
      0 scores  ``(N, C, d1..dk)``: logits ``x``.
      1 targets ``(N, C, d1..dk)``: ``t`` in [0, 1] (multi-hot or soft), or ``ignore_label``.
      2 weights (optional) ``(N,)`` per sample or ``(N, C, d1..dk)`` per element, finite, >= 0.
    Tops:
      0 loss ``()``: ``sum(-w [t (1-p)^gamma_pos log p + (1-t) p_m^gamma_neg log(1-p_m)]) / max(1, n)``,
        ``p = sigmoid(x)``, ``p_m = max(p - clip, 0)``, n per ``normalization``.
      1 probabilities (optional) ``(N, C, d1..dk)``: ``sigmoid(x)``; no gradient flows back from it.
    Backward writes to bottom 0 ``top.diff * dloss/dx / n`` (the exact derivative, or with the
    focusing factors held constant when ``detach_focal_weight``) and zeros to the others when
    asked. See ``caffe_layers.asymmetric`` for the formulas.

    param_str keys: gamma_pos (default 0), gamma_neg (4), clip (0.05), detach_focal_weight
    (false), class_weights, normalization (batch_size | full | valid | none | positives),
    ignore_label, check_finite.
    """
    NAME = "AsymmetricLoss"
    CONFIG = AsymmetricConfig
    LOSS = staticmethod(asymmetric_loss)


class MultiLabelSoftmaxLoss(LossLayer):
    """Softmax cross-entropy over multi-hot or real-valued targets (Mahajan et al. 2018).

    Bottoms:
      0 scores  ``(N, C, d1..dk)``: logits, classes on ``axis`` (default 1).
      1 targets: dense ``(N, C, d1..dk)`` weights >= 0 (multi-hot or real-valued), or class
        indices ``(N, d1..dk)`` / ``(N, 1, d1..dk)`` in [0, C) or ``ignore_label``.
      2 weights (optional) ``(N,)`` per sample or ``(N, d1..dk)`` per position, finite, >= 0.
    Tops:
      0 loss ``()``: ``sum over positions of w (-sum_c q_c log p_c) / max(1, n)``, with
        ``q`` the normalised, smoothed targets and n per ``normalization``.
      1 probabilities (optional) ``(N, C, d1..dk)``: ``softmax(x)``; no gradient flows back from it.
    Backward writes to bottom 0 ``top.diff * w (sum(q) p - q) / n`` and zeros to the others
    when asked. See ``caffe_layers.multilabel_softmax`` for the formulas.

    param_str keys: axis, target_normalization (count | sum | none), label_smoothing,
    loss (cross_entropy | kl), class_weights, normalization (batch_size | full | valid | none),
    ignore_label (index targets only), check_finite.
    """
    NAME = "MultiLabelSoftmaxLoss"
    CONFIG = SoftmaxConfig
    LOSS = staticmethod(multilabel_softmax_loss)

    def _axis(self, ndim):
        axis = self.config.axis
        if not -ndim <= axis < ndim:
            raise ValueError(f"{self.NAME}: 'axis' {axis} is out of range for scores with {ndim} axes")
        return axis % ndim

    def check_shapes(self, scores_shape, targets_shape, weights_shape):
        axis = self._axis(len(scores_shape))
        positions = scores_shape[:axis] + scores_shape[axis + 1:]
        index = is_index_target(scores_shape, targets_shape, axis)
        if targets_shape != scores_shape and not index:
            raise ValueError(f"{self.NAME}: bottom 1 (targets) must be dense {scores_shape} or class indices "
                             f"{positions}, got {targets_shape}")
        if not index and self.config.ignore_label is not None:
            raise ValueError(f"{self.NAME}: 'ignore_label' applies to class-index targets; these targets are "
                             f"dense {targets_shape}: drop a position with a zero in bottom 2 (weights)")
        if weights_shape is not None and weights_shape not in ((scores_shape[0],), positions):
            raise ValueError(f"{self.NAME}: bottom 2 (weights) must be ({scores_shape[0]},) or {positions}, "
                             f"got {weights_shape}")
        per_class(self.NAME, "class_weights", self.config.class_weights, scores_shape[axis])

    def check_targets(self, targets, scores_shape):
        axis = self._axis(len(scores_shape))
        num_classes = scores_shape[axis]
        if not is_index_target(scores_shape, targets.shape, axis):
            if not (targets.min() >= 0 and np.isfinite(targets.max())):
                bad = ~(np.isfinite(targets) & (targets >= 0))
                raise ValueError(f"{self.NAME}: bottom 1 (dense targets) must be finite and >= 0; "
                                 f"{describe_bad(targets, bad)}")
            return
        bad = ~((targets >= 0) & (targets < num_classes) & (targets == np.floor(targets)))
        if self.config.ignore_label is not None:
            bad &= targets != self.config.ignore_label
        if bad.any():
            allowed = f"integers in [0, {num_classes})" + ("" if self.config.ignore_label is None
                                                           else f" or the ignore_label {self.config.ignore_label}")
            raise ValueError(f"{self.NAME}: bottom 1 (class-index targets) must be {allowed}; "
                             f"{describe_bad(targets, bad)}")

    def loss_sums(self, scores, targets, weights, grad_out, prob_out):
        options = dict(self.config.kernel_options(), axis=self._axis(scores.ndim))
        return self.LOSS(scores, targets, weights=weights, grad_out=grad_out, prob_out=prob_out, **options)

    def normalizer_count(self, scores_shape, sums):
        outer, _, inner = as_ncs(scores_shape, self._axis(len(scores_shape)))
        return {"batch_size": outer, "full": outer * inner, "valid": sums.valid,
                "none": 1}[self.config.normalization]

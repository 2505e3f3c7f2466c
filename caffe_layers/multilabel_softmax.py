"""Softmax cross-entropy over multi-hot or real-valued targets (Mahajan et al. 2018), in NumPy.

Per position (one vector of ``C`` scores ``x`` along the class axis), ``p = softmax(x)``::

    t'   = t * class_weights                 (targets: dense weights >= 0, or a class index)
    q    = t' / M                            M: "count" = number of non-zero t, "sum" = sum(t'),
                                             "none" = 1; a position with no positive has q = 0
    q   <- (1 - eps) q + eps sum(q) / C      (label smoothing)
    loss = w ( -sum_c q_c log p_c  [+ sum_c q_c log q_c for "kl"] )
    dloss/dx = w ( sum(q) p - q )

``w`` is the position's weight (sample or position weights times the ignore mask).
``log p = x - max(x) - log(sum(exp(x - max(x))))``: no exp overflows.
"""
from collections import namedtuple

import numpy as np

from .blocks import as_ncs, block_slices

SoftmaxSums = namedtuple("SoftmaxSums", "loss valid")
SoftmaxSums.__doc__ = """Sums over all positions: ``loss`` (float) and ``valid`` (positions that are not
ignored and have a positive target)."""


def softmax(scores, axis=1):
    """Numerically stable softmax along ``axis``."""
    z = scores - np.max(scores, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def is_index_target(scores_shape, targets_shape, axis=1):
    """True when targets hold class indices: the scores' shape without ``axis``, or with it 1.

    A target of the scores' own shape is dense (so with ``C = 1`` targets are dense).
    """
    scores_shape, targets_shape = tuple(scores_shape), tuple(targets_shape)
    if targets_shape == scores_shape:
        return False
    without = scores_shape[:axis] + scores_shape[axis + 1:]
    with_one = scores_shape[:axis] + (1,) + scores_shape[axis + 1:]
    return targets_shape in (without, with_one)


def multilabel_softmax_loss(scores, targets, axis=1, target_normalization="count", label_smoothing=0.0,
                            loss="cross_entropy", class_weights=None, weights=None, ignore_label=None,
                            grad_out=None, prob_out=None):
    """Sum the loss over all positions; optionally write its gradient and the softmax.

    scores: ``(d0, .., C, ..)`` with classes on ``axis``. targets: dense non-negative weights of
    the scores' shape, or class indices of the scores' shape without ``axis`` (or with it 1).
    class_weights: None or ``C`` floats >= 0. weights: None, ``(d0,)`` (per sample) or the
    positions' shape (the scores' shape without ``axis``). ignore_label: index targets equal to
    it add nothing and are not counted. grad_out, prob_out: None or arrays of the scores' shape,
    written with ``dloss/dscores`` (not normalised) and ``softmax(scores)``.
    Returns ``SoftmaxSums(loss, valid)``.
    """
    ncs = as_ncs(scores.shape, axis)
    num_classes = ncs[1]
    x_all = scores.reshape(ncs)
    index = is_index_target(scores.shape, targets.shape, axis)
    t_all = targets.reshape((ncs[0], 1, ncs[2]) if index else ncs)
    grad_all = None if grad_out is None else grad_out.reshape(ncs)
    prob_all = None if prob_out is None else prob_out.reshape(ncs)
    if class_weights is not None:
        class_weights = np.asarray(class_weights, dtype=scores.dtype).reshape(1, num_classes, 1)
    position_weights = None
    if weights is not None:
        positions = scores.shape[:axis] + scores.shape[axis + 1:]
        weights = np.asarray(weights, dtype=scores.dtype)
        weights = weights.reshape(weights.shape + (1,) * (len(positions) - weights.ndim))
        position_weights = np.broadcast_to(weights, positions).reshape(ncs[0], 1, ncs[2])

    total = 0.0
    valid = 0
    for n, s in block_slices(ncs):
        x = x_all[n, :, s]
        w = None if position_weights is None else position_weights[n, :, s]
        kept = None
        if index:
            labels = t_all[n, :, s]
            t = np.zeros_like(x)
            if ignore_label is not None:
                kept = labels != ignore_label
                labels = np.where(kept, labels, 0)
                w = kept if w is None else w * kept
            # (n, 1, s) class indices -> (n, C, s) one-hot targets
            np.put_along_axis(t, labels.astype(np.intp), 1, axis=1)
        else:
            t = t_all[n, :, s]
        q = _normalized_targets(t, class_weights, target_normalization, label_smoothing, num_classes)
        block_loss, block_valid, grad, prob = _softmax_block(x, q, w, kept, loss == "kl", grad_all is not None)
        total += block_loss
        valid += block_valid
        if grad_all is not None:
            grad_all[n, :, s] = grad
        if prob_all is not None:
            prob_all[n, :, s] = prob
    return SoftmaxSums(total, valid)


def _normalized_targets(t, class_weights, target_normalization, label_smoothing, num_classes):
    """Dense ``(n, C, s)`` targets -> ``q``, per position summing to the target mass."""
    q = t if class_weights is None else t * class_weights
    if target_normalization == "count":
        mass = np.count_nonzero(t, axis=1, keepdims=True)
    elif target_normalization == "sum":
        mass = np.sum(q, axis=1, keepdims=True)
    else:
        mass = None
    if mass is not None:
        q = q / np.where(mass > 0, mass, 1)  # a position with no positive keeps q = 0
    if label_smoothing:
        q = (1 - label_smoothing) * q + (label_smoothing / num_classes) * np.sum(q, axis=1, keepdims=True)
    return q


def _softmax_block(x, q, w, kept, kl, want_grad):
    """Loss sum, valid count, gradient (or None) and softmax of one ``(n, C, s)`` block.

    w: None or ``(n, 1, s)`` position weights (the ignore mask included); kept: None or the
    ``(n, 1, s)`` mask of positions that are not ignored.
    """
    z = x - np.max(x, axis=1, keepdims=True)
    e = np.exp(z)
    sum_e = np.sum(e, axis=1, keepdims=True)
    p = e / sum_e
    mass = np.sum(q, axis=1, keepdims=True)                        # sum(q): (n, C, s) -> (n, 1, s)
    # -sum_c q_c log p_c = sum(q) log(sum exp z) - sum_c q_c z_c
    loss_pos = mass * np.log(sum_e) - np.sum(q * z, axis=1, keepdims=True)
    if kl:
        # + sum_c q_c log q_c, with 0 log 0 = 0
        q_log_q = np.multiply(q, np.log(q, out=np.zeros_like(q), where=q > 0))
        loss_pos = loss_pos + np.sum(q_log_q, axis=1, keepdims=True)
    valid = mass > 0
    if kept is not None:
        valid &= kept
    if w is not None:
        loss_pos = loss_pos * w
    grad = None
    if want_grad:
        grad = mass * p - q
        if w is not None:
            grad = grad * w
    return float(np.sum(loss_pos, dtype=np.float64)), int(np.count_nonzero(valid)), grad, p

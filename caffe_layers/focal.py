"""Sigmoid focal loss (Lin et al. 2017, RetinaNet) in plain NumPy.

Per element, with score ``x``, target ``t`` in [0, 1] (soft targets allowed), ``p = sigmoid(x)``::

    ce      = -(t log p + (1 - t) log(1 - p))
    q       = 1 - p_t = p (1 - t) + (1 - p) t
    alpha_t = alpha t + (1 - alpha)(1 - t)           (1 when alpha is None)
    loss    = w alpha_t q^gamma ce
    dloss/dx = w alpha_t [ q^gamma (p - t) + gamma q^(gamma - 1) p (1 - p) (1 - 2t) ce ]

``w`` is the product of the class weight, the sample or element weight and the ignore mask.
``gamma = 0`` is sigmoid cross-entropy. Everything is computed from ``e = exp(-|x|)`` so that
no term overflows or cancels, whatever the size of ``x``.
"""
from collections import namedtuple

import numpy as np

from .blocks import as_ncs, block_slices

FocalSums = namedtuple("FocalSums", "loss valid positives")
FocalSums.__doc__ = """Sums over all elements: ``loss`` (float), ``valid`` (non-ignored elements),
``positives`` (sum of non-ignored targets, RetinaNet's normaliser)."""


def sigmoid(x):
    """Numerically stable logistic function, in the dtype of ``x``."""
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)
    return np.where(x >= 0, r, e * r)


def sigmoid_focal_loss(scores, targets, gamma=2.0, alpha=None, class_weights=None, weights=None,
                       ignore_label=None, grad_out=None, prob_out=None):
    """Sum the focal loss over all elements; optionally write its gradient and sigmoid(scores).

    scores, targets: ``(N, C, d1..dk)`` arrays, classes on axis 1 (``(N, C)`` is fine).
    gamma: float >= 0. alpha: None, a float in [0, 1], or ``C`` floats.
    class_weights: None or ``C`` non-negative floats. weights: None, ``(N,)`` or the scores'
    shape. ignore_label: targets equal to it add no loss, no gradient and are not counted.
    grad_out, prob_out: None or arrays of the scores' shape, written in place with
    ``dloss/dscores`` (not normalised) and ``sigmoid(scores)``.
    Returns ``FocalSums(loss, valid, positives)``.
    """
    ncs = as_ncs(scores.shape)
    x_all = scores.reshape(ncs)
    t_all = targets.reshape(ncs)
    grad_all = None if grad_out is None else grad_out.reshape(ncs)
    prob_all = None if prob_out is None else prob_out.reshape(ncs)
    per_class = (1, ncs[1], 1)
    if alpha is not None:
        alpha = np.reshape(np.asarray(alpha, dtype=scores.dtype), (1, -1, 1))
        alpha = np.broadcast_to(alpha, per_class)
    if class_weights is not None:
        class_weights = np.asarray(class_weights, dtype=scores.dtype).reshape(per_class)
    if weights is not None:
        weights = np.asarray(weights, dtype=scores.dtype)
        weights = weights.reshape((ncs[0], 1, 1) if weights.ndim == 1 else ncs)

    loss = 0.0
    valid = 0
    positives = 0.0
    for n, s in block_slices(ncs):
        x = x_all[n, :, s]
        t = t_all[n, :, s]
        w = class_weights
        if weights is not None:
            w_block = weights[n] if weights.shape[2] == 1 else weights[n, :, s]
            w = w_block if w is None else w * w_block
        if ignore_label is not None:
            kept = t != ignore_label
            t = np.where(kept, t, 0).astype(x.dtype, copy=False)
            w = kept if w is None else w * kept
            valid += int(np.count_nonzero(kept))
        else:
            valid += t.size
        positives += float(np.sum(t, dtype=np.float64))
        block_loss, grad, prob = _focal_block(x, t, gamma, alpha, w, grad_all is not None)
        loss += block_loss
        if grad_all is not None:
            grad_all[n, :, s] = grad
        if prob_all is not None:
            prob_all[n, :, s] = prob
    return FocalSums(loss, valid, positives)


def _focal_block(x, t, gamma, alpha, w, want_grad):
    """Loss sum, gradient (or None) and sigmoid of one block; w: None or broadcastable weights."""
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)                          # sigmoid(|x|)
    positive = x >= 0
    p = np.where(positive, r, e * r)         # sigmoid(x) = e^-|x| / (1 + e^-|x|) for x < 0
    pm = np.where(positive, e * r, r)        # 1 - p, without the cancellation of 1 - p
    relu = np.maximum(x, 0)
    t1 = 1 - t
    # ce = softplus(-x) t + softplus(x) (1 - t), softplus(x) = max(x, 0) + log1p(e^-|x|):
    # both terms are >= 0, so nothing cancels at large |x|.
    ce = np.log1p(e) + relu * t1 + (relu - x) * t
    u = p * t1                               # p (1 - t)
    v = pm * t                               # (1 - p) t
    scale = w
    if alpha is not None:
        alpha_t = alpha * t + (1 - alpha) * t1
        scale = alpha_t if scale is None else scale * alpha_t
    if gamma == 0:
        loss_el = ce
        grad = (u - v) if want_grad else None  # p - t
    else:
        q = u + v                            # 1 - p_t
        q_gamma = q * q if gamma == 2 else q if gamma == 1 else np.power(q, gamma)
        loss_el = q_gamma * ce
        if want_grad:
            if gamma == 1:
                q_gamma_1 = 1
            elif gamma == 2:
                q_gamma_1 = q
            else:  # q^(gamma-1) is infinite at q = 0 when gamma < 1; the whole term's limit there is 0
                q_gamma_1 = np.power(q, gamma - 1, out=np.zeros_like(q), where=q > 0)
            grad = q_gamma * (u - v) + (gamma * q_gamma_1) * (p * pm) * (t1 - t) * ce
        else:
            grad = None
    if scale is not None:
        loss_el = loss_el * scale
        if grad is not None:
            grad = grad * scale
    return float(np.sum(loss_el, dtype=np.float64)), grad, p

"""Sigmoid focal loss (Lin et al. 2017, RetinaNet) in plain NumPy.

Per element, with score ``x``, target ``t`` in [0, 1] (soft targets allowed), ``p = sigmoid(x)``::

    ce      = -(t log p + (1 - t) log(1 - p))
    q       = 1 - p_t = p (1 - t) + (1 - p) t
    alpha_t = alpha t + (1 - alpha)(1 - t)           (1 when alpha is None)
    loss    = w alpha_t q^gamma ce
    dloss/dx = w alpha_t [ q^gamma (p - t) + gamma q^(gamma - 1) p (1 - p) (1 - 2t) ce ]

``w`` is the product of the class weight, the sample or element weight and the ignore mask.
``gamma = 0`` is sigmoid cross-entropy. Everything is computed from ``e = exp(-|x|)`` so that
no term overflows, whatever the size of ``x``; for ``gamma > 0``, ``1 - p`` and ``1 - p_t`` are
computed without cancelling, so ``q^gamma`` and ``q^(gamma - 1)`` stay accurate at saturation.

The blob is walked in contiguous blocks (``caffe_layers.blocks``) and each operation writes
into scratch arrays reused from block to block: about 30 passes over a block that stays in
cache, one ``exp`` and one ``log`` per element, no temporary of the blob's size.
"""
from collections import namedtuple

import numpy as np

from .blocks import ElementWeights, Scratch, as_ncs, flat_blocks, ncs_views

FocalSums = namedtuple("FocalSums", "loss valid positives")
FocalSums.__doc__ = """Sums over all elements: ``loss`` (float), ``valid`` (non-ignored elements),
``positives`` (sum of non-ignored targets, RetinaNet's normaliser)."""


def sigmoid(x):
    """Numerically stable logistic function, in the dtype of ``x``."""
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)
    return np.where(x >= 0, r, e * r)


def log1p_small(e, one_plus_e, out):
    """``log(1 + e)`` for ``e`` in [0, 1], into ``out``; ``one_plus_e`` holds ``1 + e`` (as float
    arithmetic rounds it) and is overwritten.

    Not ``np.log1p(e)``: numpy has a SIMD ``log`` on every x86-64 CPU but a SIMD ``log1p`` only
    with AVX-512; on an AVX2 machine ``log1p`` measured 8-12 ns per float32 element against 2-3 ns
    for ``log`` (with AVX-512 both cost about 0.3 ns). Taking ``log(1 + e)`` plus the rounding
    error of ``1 + e`` is as accurate as ``log1p``: with ``u = fl(1 + e)``, ``u - 1`` is exact, so
    ``e - (u - 1)`` is that error (< e), and ``log1p(e) = log(u) + (e - (u - 1)) / u`` to first
    order, where dividing by ``u`` (1 when the error matters) changes nothing in float arithmetic.
    """
    np.log(one_plus_e, out=out)
    return np.add(out, np.subtract(e, np.subtract(one_plus_e, 1, out=one_plus_e), out=one_plus_e), out=out)


def sigmoid_focal_loss(scores, targets, *, gamma=2.0, alpha=None, class_weights=None, weights=None,
                       ignore_label=None, grad_out=None, prob_out=None):
    """Sum the focal loss over all elements; optionally write its gradient and sigmoid(scores).

    scores, targets: ``(N, C, d1..dk)`` arrays, classes on axis 1 (``(N, C)`` is fine).
    gamma: float >= 0. alpha: None, a float in [0, 1], or ``C`` floats.
    class_weights: None or ``C`` non-negative floats. weights: None, ``(N,)`` or the scores'
    shape. ignore_label: targets equal to it add no loss, no gradient and are not counted.
    grad_out, prob_out: None or arrays of the scores' shape, written in place with
    ``dloss/dscores`` (not normalised) and ``sigmoid(scores)``.
    Returns ``FocalSums(loss, valid, positives)``.

    The readable float64 form of the same loss is ``caffe_layers.reference.sigmoid_focal_elements``;
    the tests hold this blocked kernel to it.
    """
    ncs = as_ncs(scores.shape)
    dtype = np.result_type(scores.dtype, np.float32)  # float32 blobs stay float32, float64 stays
    x_all, t_all, grad_all, prob_all = ncs_views(ncs, scores, targets, grad_out, prob_out)
    per_class = (1, ncs[1], 1)
    alpha_base = alpha_slope = None
    if alpha is not None:
        alpha = np.asarray(alpha, dtype=dtype)
        alpha = alpha.reshape(per_class) if alpha.ndim else alpha
        # alpha_t = alpha t + (1 - alpha)(1 - t) = (1 - alpha) + (2 alpha - 1) t
        alpha_base, alpha_slope = 1 - alpha, 2 * alpha - 1
    element_weights = ElementWeights(ncs, dtype, class_weights=class_weights, weights=weights,
                                     ignore_label=ignore_label)

    scratch = Scratch(dtype)
    # 10 arrays for the math; one more for the cleaned targets, one for alpha_t and the product
    # of the weights (alpha_t first, so that the product accumulates into its array)
    cleaned, product = 10, 10 + element_weights.cleans_targets
    count = product + (alpha is not None or element_weights.needs_product)
    loss = 0.0
    valid = 0
    positives = 0.0
    for n, c, s in flat_blocks(ncs):
        x = x_all[n, c, s]
        work = scratch.arrays(x.shape, count)
        t, kept, kept_count = element_weights.targets(n, c, s, t_all[n, c, s], out=work[cleaned] if
                                                      element_weights.cleans_targets else None)
        valid += kept_count
        positives += float(np.add.reduce(t, axis=None))
        alpha_t = None
        if alpha is not None:
            alpha_t = np.multiply(t, alpha_slope if alpha_slope.ndim == 0 else alpha_slope[:, c], out=work[product])
            np.add(alpha_t, alpha_base if alpha_base.ndim == 0 else alpha_base[:, c], out=alpha_t)
        scale = element_weights.scale(n, c, s, kept, out=work[product] if count > product else None, first=alpha_t)
        loss += _focal_block(x, t, gamma, scale, work,
                             None if grad_all is None else grad_all[n, c, s],
                             None if prob_all is None else prob_all[n, c, s])
    return FocalSums(loss, valid, positives)


def _focal_block(x, t, gamma, scale, work, grad, prob):
    """Loss sum of one block; writes the gradient into ``grad`` and sigmoid(x) into ``prob``
    when they are not None. scale: None or the elements' weights, broadcastable to the block.
    work: at least 10 scratch arrays of the block's shape (the first 10 are used); each is
    named below by what it holds, and reused once what it held is no longer needed."""
    e, r, ce, p, is_pos, tmp, one_minus_t, p_neg, p_pos, q = work[:10]
    np.abs(x, out=tmp)
    np.exp(np.negative(tmp, out=tmp), out=e)     # e = exp(-|x|), in (0, 1]: never overflows
    one_plus_e = np.add(e, 1, out=tmp)
    np.divide(1, one_plus_e, out=r)              # r = sigmoid(|x|)
    log1p = log1p_small(e, one_plus_e, out=ce)   # log(1 + e), exact for tiny e (x << 0)
    np.greater_equal(x, 0, out=is_pos)           # [x >= 0] as 0.0 / 1.0
    # p = sigmoid(x) = r (x >= 0) or e r (x < 0) = max(e, [x >= 0]) r, since e <= 1: one ufunc
    # pass instead of np.where's temporaries
    np.multiply(np.maximum(e, is_pos, out=p), r, out=p)
    # ce = softplus(x) - x t = max(x, 0) - x t + log1p(e) = x ([x >= 0] - t) + log1p(e)
    np.add(np.multiply(np.subtract(is_pos, t, out=tmp), x, out=tmp), log1p, out=ce)
    if prob is not None:
        np.copyto(prob, p)
    if scale is not None:
        np.multiply(ce, scale, out=ce)

    if gamma == 0:
        if grad is not None:
            np.subtract(p, t, out=grad)
            if scale is not None:
                np.multiply(grad, scale, out=grad)
        return float(np.add.reduce(ce, axis=None))

    # 1 - p = r (x < 0) or e r (x >= 0) = max(e, [x < 0]) r: no cancellation in 1 - p at saturation
    one_minus_p = np.multiply(np.maximum(e, np.subtract(1, is_pos, out=tmp), out=tmp), r, out=tmp)
    np.subtract(1, t, out=one_minus_t)
    np.multiply(p, one_minus_t, out=p_neg)        # p (1 - t): the negative part of 1 - p_t
    np.multiply(one_minus_p, t, out=p_pos)        # (1 - p) t: the positive part
    np.add(p_neg, p_pos, out=q)                   # q = 1 - p_t, a sum of two terms >= 0: no cancellation
    if gamma == 1:
        q_gamma = q
    elif gamma == 2:
        q_gamma = np.multiply(q, q, out=is_pos)   # q * q: a quarter of the time of np.power(q, 2)
    else:
        q_gamma = np.power(q, gamma, out=is_pos)
    loss = float(np.add.reduce(np.multiply(q_gamma, ce, out=r if grad is None else e), axis=None))
    if grad is None:
        return loss
    # gamma q^(gamma - 1) p (1 - p) (1 - 2t) ce, built in e (e and r are no longer needed):
    np.multiply(ce, np.subtract(one_minus_t, t, out=one_minus_t), out=ce)   # (1 - 2t) ce
    np.multiply(ce, np.multiply(p, one_minus_p, out=one_minus_p), out=e)    # p (1 - p) (1 - 2t) ce
    if gamma == 2:
        np.multiply(e, q, out=e)
    elif gamma != 1:
        # q^(gamma - 1) = q^gamma / q, one division instead of a second np.power; where q = 0
        # the term's limit is 0 (q^gamma = 0 there), so q is floored at the smallest normal
        np.multiply(e, np.divide(q_gamma, np.maximum(q, np.finfo(q.dtype).tiny, out=q), out=q), out=e)
    if gamma != 1:
        np.multiply(e, gamma, out=e)
    # + q^gamma (p - t), with p - t = p (1 - t) - (1 - p) t: exact at saturation, unlike p - t
    g = np.multiply(np.subtract(p_neg, p_pos, out=p_neg), q_gamma, out=p_neg)
    if scale is not None:
        np.multiply(g, scale, out=g)
    np.add(g, e, out=grad)
    return loss

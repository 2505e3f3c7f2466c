"""Asymmetric loss (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label Classification") in NumPy.

Per element, with score ``x``, target ``t`` in [0, 1] (binary or soft), ``p = sigmoid(x)`` and
the probability margin ``m`` (``clip``)::

    p_m  = max(p - m, 0)                          the shifted probability of a negative
    A    = 1 - p_m = (1 - p) + m  (p > m), 1 (p <= m)
    loss = -w [ t (1 - p)^gamma_pos log p  +  (1 - t) p_m^gamma_neg log A ]

    dloss/dx = w [ -t (1 - p)^gamma_pos ((1 - p) + gamma_pos p (-log p))
                   + (1 - t) p (1 - p) (p_m^gamma_neg / A + gamma_neg p_m^(gamma_neg - 1) (-log A)) ]

Below the margin (``p <= m``) the negative term and its gradient are 0; with ``m = 0``,
``p (1 - p) / A = p``. With ``detach_focal_weight`` the focusing factors ``(1 - p)^gamma_pos``
and ``p_m^gamma_neg`` are constants in backward, as in the paper's released training code::

    dloss/dx = w [ -t (1 - p)^gamma_pos (1 - p)  +  (1 - t) p_m^gamma_neg p (1 - p) / A ]

``w`` is the product of the class weight, the sample or element weight and the ignore mask.
``gamma_pos = gamma_neg = 0, m = 0`` is sigmoid cross-entropy; ``gamma_pos = gamma_neg = g,
m = 0`` is the focal loss with ``gamma = g`` and no alpha for binary targets (for soft targets
this loss is linear in ``t``, the focal loss is not).

The readable float64 form is ``caffe_layers.reference.asymmetric_elements``; the tests hold this
kernel to it. Here everything comes from ``e = exp(-|x|)``: ``p`` and ``1 - p`` without
cancelling, ``-log p = log1p(e) + max(-x, 0)``, ``-log(1 - p) = log1p(e) + max(x, 0)`` and
``A = (1 - p) + m``, so every term is finite for every finite ``x`` (no epsilon clamp) and
fractional gammas stay finite at saturation.

How it is computed: the blob is walked in contiguous blocks (``caffe_layers.blocks``) with
scratch arrays reused from block to block, no temporary of the blob's size. A block of dense
or soft targets takes one ``exp`` and one ``log`` (of 1 + e) per element, and one ``log`` more for
``log A`` when ``m > 0``. A block of multi-hot targets, mostly zeros (``SPARSE_TARGETS``), is
walked as if every target were 0 (one ``exp`` and one ``log A``, no ``log p``, nothing with
``t``), and its few non-zero targets are computed again with their targets, all in one block
at the end, over what the walk wrote.
"""
from collections import namedtuple

import numpy as np

from .blocks import ElementWeights, Scratch, as_ncs, flat_blocks, ncs_views, take_flat
from .focal import log1p_small

AsymmetricSums = namedtuple("AsymmetricSums", "loss valid positives")
AsymmetricSums.__doc__ = """Sums over all elements: ``loss`` (float), ``valid`` (non-ignored elements),
``positives`` (sum of non-ignored targets)."""


# Scratch arrays per block for the math: 10, one more for -log p (dense targets, or m = 0) and
# one for (1 - p)^gamma_pos (dense targets, gamma_pos not 0 or 1); then one for cleaned targets
# (ignore_label) and one for a product of weights, when needed. Only what a block needs is
# allocated: the sparse walk with the default options holds 10, as many as the focal loss.
_BASE_ARRAYS = 10
# A block whose targets are at most this fraction of non-zeros (multi-hot labels) is walked as
# if every target were 0, and its non-zero targets are computed again, together, at the end:
# the walk then skips log p, everything with t and the sum of the targets (about a third of the
# passes: 20% of the time at 0.5% non-zeros, benchmarks/README.md), while each non-zero costs
# about 20 ns more; the two cost the same at 3-4% non-zeros.
SPARSE_TARGETS = 1 / 32


def asymmetric_loss(scores, targets, *, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, detach_focal_weight=False,
                    class_weights=None, weights=None, ignore_label=None, grad_out=None, prob_out=None):
    """Sum the asymmetric loss over all elements; optionally write its gradient and sigmoid(scores).

    scores, targets: ``(N, C, d1..dk)`` arrays, classes on axis 1 (``(N, C)`` is fine).
    gamma_pos, gamma_neg: floats >= 0. clip: the margin ``m``, in [0, 1).
    detach_focal_weight: True makes the focusing factors constants in the gradient.
    class_weights: None or ``C`` non-negative floats. weights: None, ``(N,)`` (one per sample)
    or the scores' shape (one per element). ignore_label: targets equal to it add no loss, no
    gradient and are not counted. grad_out, prob_out: None or arrays of the scores' shape,
    written in place with ``dloss/dscores`` (not normalised) and ``sigmoid(scores)``.
    Returns ``AsymmetricSums(loss, valid, positives)``. The formulas are in this module's
    docstring; the readable float64 form is ``caffe_layers.reference.asymmetric_elements``.
    """
    ncs = as_ncs(scores.shape)
    dtype = np.result_type(scores.dtype, np.float32)  # float32 blobs stay float32, float64 stays
    x_all, t_all, grad_all, prob_all = ncs_views(ncs, scores, targets, grad_out, prob_out)
    options = _Options(float(gamma_pos), float(gamma_neg), float(clip), bool(detach_focal_weight), dtype)
    element_weights = ElementWeights(ncs, dtype, class_weights=class_weights, weights=weights,
                                     ignore_label=ignore_label)

    scratch = Scratch(dtype)
    flags = Scratch(np.bool_)
    extra_count = element_weights.cleans_targets + element_weights.needs_product
    loss = 0.0
    valid = 0
    positives = 0.0
    sparse = []  # flat indices into (N, C, S) of the non-zero targets of blocks walked as negatives
    for n, c, s in flat_blocks(ncs):
        x = x_all[n, c, s]
        # the cleaned targets and the weights' product first, the math's arrays after them
        spare = list(scratch.arrays(x.shape, extra_count)) if extra_count else []
        t, kept, kept_count = element_weights.targets(
            n, c, s, t_all[n, c, s], out=spare.pop() if element_weights.cleans_targets else None)
        valid += kept_count
        scale = element_weights.scale(n, c, s, kept, out=spare.pop() if spare else None)
        grad = None if grad_all is None else grad_all[n, c, s]
        prob = None if prob_all is None else prob_all[n, c, s]
        # count, then find, the non-zeros of the bool array t != 0: np.flatnonzero of the float
        # array itself costs twenty times as much
        nonzero_flags = np.not_equal(t, 0, out=flags.arrays(x.shape, 1)[0])
        if np.count_nonzero(nonzero_flags) <= SPARSE_TARGETS * t.size:
            nonzero = np.flatnonzero(nonzero_flags)
            work = _work_arrays(scratch, x.shape, extra_count, options, dense=False)
            loss += _asymmetric_block(x, None, options, scale, work, grad, prob, skip=nonzero)
            # a flat_blocks box is a contiguous run of the C-ordered (N, C, S) array, from here:
            sparse.append(nonzero + ((n.start * ncs[1] + c.start) * ncs[2] + s.start))
        else:
            positives += float(np.add.reduce(t, axis=None))
            work = _work_arrays(scratch, x.shape, extra_count, options, dense=True)
            loss += _asymmetric_block(x, t, options, scale, work, grad, prob)
    if sparse:
        sparse_loss, sparse_positives = _at_nonzero_targets(np.concatenate(sparse), x_all, t_all, options, dtype,
                                                            element_weights, grad_all)
        loss += sparse_loss
        positives += sparse_positives
    return AsymmetricSums(loss, valid, positives)


def _work_arrays(scratch, shape, skip, o, dense):
    """The block's scratch arrays for the math, after the first ``skip``: ``_BASE_ARRAYS``, then
    -log p and (1 - p)^gamma_pos where the block needs them (else None)."""
    neg_log_p = dense or o.clip == 0
    focus_pos = dense and o.gamma_pos not in (0, 1)
    arrays = scratch.arrays(shape, skip + _BASE_ARRAYS + neg_log_p + focus_pos)[skip:]
    base, optional = arrays[:_BASE_ARRAYS], list(arrays[_BASE_ARRAYS:])
    return base + (optional.pop(0) if neg_log_p else None,) + (optional.pop(0) if focus_pos else None,)


class _Options:
    """The loss options, as the block function reads them."""

    def __init__(self, gamma_pos, gamma_neg, clip, detach, dtype):
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.clip = clip
        self.detach = detach
        self.tiny = np.finfo(dtype).tiny


def _at_nonzero_targets(flat, x_all, t_all, o, dtype, element_weights, grad_all):
    """Loss sum and targets' sum of the elements at ``flat`` (indices into the C-ordered
    ``(N, C, S)`` arrays, non-zero targets that are not ignored), computed with their targets as
    one block of their own; their gradient is written into ``grad_all`` over what the
    all-negative walk wrote."""
    if flat.size == 0:
        return 0.0, 0.0
    x = take_flat(x_all, flat)
    t = take_flat(t_all, flat)  # not ignored, so the targets as given
    scale = element_weights.at(flat, x_all.shape)
    grad = None if grad_all is None else np.empty(x.shape, dtype=dtype)
    loss = _asymmetric_block(x, t, o, scale, _work_arrays(Scratch(dtype), x.shape, 0, o, dense=True), grad, None)
    if grad is not None:
        if grad_all.flags.c_contiguous:
            grad_all.reshape(-1)[flat] = grad  # a view of the contiguous array
        else:
            grad_all[np.unravel_index(flat, grad_all.shape)] = grad
    return loss, float(np.add.reduce(t, axis=None))


def _power(base, gamma, out):
    """``base ** gamma`` for ``base >= 0``, into ``out`` (or ``base`` itself for ``gamma = 1``);
    None for ``gamma = 0``, the factor 1. Integer gammas up to 4 by multiplying: ``np.power``
    costs about as much as fifteen multiplies here."""
    if gamma == 0:
        return None
    if gamma == 1:
        return base
    if gamma == 2:
        return np.multiply(base, base, out=out)
    if gamma == 3:
        return np.multiply(np.multiply(base, base, out=out), base, out=out)
    if gamma == 4:
        square = np.multiply(base, base, out=out)
        return np.multiply(square, square, out=out)
    return np.power(base, gamma, out=out)


def _asymmetric_block(x, t, o, scale, work, grad, prob, skip=None):
    """Loss sum of one block; writes the gradient into ``grad`` and sigmoid(x) into ``prob``
    when they are not None. scale: None or the elements' weights, broadcastable to the block.
    work: the block's scratch arrays (``_work_arrays``).

    t None: every target is taken as 0 (a block of few non-zero targets); ``skip``, the flat
    indices of its non-zero targets, are left out of the loss sum, and their gradient is left
    for ``_at_nonzero_targets`` to overwrite.
    """
    (exp_neg_abs, sigmoid_abs, prob_array, one_minus_p, log_a_array, p_m_array, focus_neg_array, below_array,
     spare_a, spare_b, neg_log_p_array, focus_pos_array) = work
    gp, gn, m = o.gamma_pos, o.gamma_neg, o.clip

    e = np.exp(np.negative(np.abs(x, out=spare_a), out=spare_a), out=exp_neg_abs)  # exp(-|x|) in (0, 1]: no overflow
    one_plus_e = np.add(e, 1, out=spare_a)
    r = np.divide(1, one_plus_e, out=sigmoid_abs)   # r = sigmoid(|x|)
    neg_log_p = None
    if t is not None or m == 0:
        # log(1 + e) exact where 1 + e rounds to 1 (float32 |x| > 17), at the cost of np.log
        # (focal.log1p_small says why not np.log1p); one_plus_e is free after this
        log1p_e = log1p_small(e, one_plus_e, out=neg_log_p_array)
    x_nonneg = np.greater_equal(x, 0, out=spare_b)  # [x >= 0] as 0 or 1
    # p = r (x >= 0) or e r (x < 0) = max(e, [x >= 0]) r: two fast passes (np.where is one slow one)
    p = np.multiply(np.maximum(e, x_nonneg, out=prob_array), r, out=prob_array)
    x_neg = np.subtract(1, x_nonneg, out=spare_b)   # [x < 0]
    # 1 - p = e r (x >= 0) or r (x < 0), without the cancellation of 1 - p
    q = np.multiply(np.maximum(e, x_neg, out=one_minus_p), r, out=one_minus_p)
    if t is not None or m == 0:
        x_neg_part = np.multiply(x, x_neg, out=spare_b)  # min(x, 0)
        if m == 0:
            # log(1 - p) = -(log(1 + e) + max(x, 0)), with max(x, 0) = x - min(x, 0) exactly. Not
            # log p - x: that cancels where log(1 - p) is tiny (float32 x = -20: 20 + 2e-9 - 20 = 0).
            log_a = np.subtract(np.subtract(x_neg_part, x, out=log_a_array), log1p_e, out=log_a_array)
        # -log p = log(1 + e) + max(-x, 0) = log(1 + e) - min(x, 0)
        neg_log_p = np.subtract(log1p_e, x_neg_part, out=log1p_e)
    if prob is not None:
        np.copyto(prob, p)
    # from here exp_neg_abs, sigmoid_abs, spare_a and spare_b are free for other uses

    if m > 0:
        a = np.add(q, m, out=exp_neg_abs)           # A = 1 - p_m = (1 - p) + m, without cancelling
        log_a = np.log(a, out=log_a_array)
        p_m = np.subtract(p, m, out=p_m_array)
        # max(p - m, 0) as max(p_m, p_m * 0): np.maximum with the scalar 0 costs 0.33 ns per
        # float32 element here, these two passes over arrays 0.13 ns. (p_m * 0 is -0 where
        # p_m < 0: that is 0 too.)
        np.maximum(p_m, np.multiply(p_m, 0, out=spare_a), out=p_m)
        # Below the margin A > 1 (not the 1 of the formula), but every use of log A there is
        # multiplied by focus_neg or p_m^(gamma_neg - 1), which are 0 there.
    else:
        a = q                                       # A = 1 - p, and log_a = log(1 - p) from above
        p_m = p
    focus_neg, below = _negative_focus(p_m, gn, m, o, focus_neg_array, below_array)

    # loss = t focus_pos (-log p) - (1 - t) focus_neg log A
    if t is None:
        loss_neg = log_a if focus_neg is None else np.multiply(log_a, focus_neg, out=sigmoid_abs)
        if scale is not None:
            loss_neg = np.multiply(loss_neg, scale, out=sigmoid_abs)
        loss = -float(np.add.reduce(loss_neg, axis=None)) + float(np.add.reduce(loss_neg.reshape(-1)[skip]))
    else:
        focus_pos = _power(q, gp, focus_pos_array)  # (1 - p)^gamma_pos; None for 1
        t_neg = np.subtract(1, t, out=spare_a)      # 1 - t
        loss_pos = np.multiply(t, neg_log_p, out=spare_b)
        if focus_pos is not None:
            np.multiply(loss_pos, focus_pos, out=loss_pos)
        loss_neg = np.multiply(t_neg, log_a, out=sigmoid_abs)
        if focus_neg is not None:
            np.multiply(loss_neg, focus_neg, out=loss_neg)
        element_loss = np.subtract(loss_pos, loss_neg, out=loss_pos)
        if scale is not None:
            np.multiply(element_loss, scale, out=element_loss)
        loss = float(np.add.reduce(element_loss, axis=None))
    if grad is None:
        return loss

    # negative side, before the factor (1 - t): p (1 - p) [focus_neg / A - gamma_neg p_m^(gamma_neg - 1) log A]
    if m > 0:
        p_q = np.multiply(p, q, out=sigmoid_abs)    # p (1 - p)
        if below is None:                           # p (1 - p) focus_neg / A
            neg_grad = np.divide(p_q, a, out=a)
            if focus_neg is not None:
                np.multiply(neg_grad, focus_neg, out=neg_grad)
        else:
            # focus_neg = p_m below, so the bracket is below (p_m / A - gamma_neg log A): one pass
            # fewer than taking focus_neg / A and below log A apart
            neg_grad = np.divide(p_m, a, out=a)
            np.subtract(neg_grad, np.multiply(log_a, gn, out=log_a), out=neg_grad)
            np.multiply(neg_grad, below, out=neg_grad)
            np.multiply(neg_grad, p_q, out=neg_grad)
    elif gn == 0 or o.detach:
        # A = 1 - p: p (1 - p) / A = p
        neg_grad = p if focus_neg is None else np.multiply(p, focus_neg, out=exp_neg_abs)
    else:
        # A = 1 - p: p (1 - p) / A = p and p (1 - p) gamma_neg p^(gamma_neg - 1) = gamma_neg (1 - p) focus_neg,
        # so the bracket is focus_neg [p - gamma_neg (1 - p) log(1 - p)]: no division by 1 - p
        neg_grad = np.multiply(q, log_a, out=exp_neg_abs)
        np.multiply(neg_grad, -gn, out=neg_grad)
        np.add(neg_grad, p, out=neg_grad)
        np.multiply(neg_grad, focus_neg, out=neg_grad)
    if t is None:
        if scale is None:
            np.copyto(grad, neg_grad)
        else:
            np.multiply(neg_grad, scale, out=grad)
        return loss

    # positive side: t focus_pos [(1 - p) + gamma_pos p (-log p)] (to be subtracted), into spare_b
    if gp != 0 and not o.detach:
        pos_grad = np.multiply(p, neg_log_p, out=neg_log_p)
        np.add(np.multiply(pos_grad, gp, out=pos_grad), q, out=pos_grad)
    else:
        pos_grad = q
    pos_grad = np.multiply(pos_grad, t, out=spare_b)
    if focus_pos is not None:
        np.multiply(pos_grad, focus_pos, out=pos_grad)
    # grad = w [(1 - t) neg_grad - pos_grad]
    np.subtract(np.multiply(neg_grad, t_neg, out=t_neg), pos_grad, out=grad)
    if scale is not None:
        np.multiply(grad, scale, out=grad)
    return loss


def _negative_focus(p_m, gn, m, o, focus_out, below_out):
    """``(focus_neg, below)``: ``focus_neg = p_m^gamma_neg`` (None for the factor 1) and, when
    the gradient needs it (``m > 0``, ``gamma_neg > 0``, not detached), ``below =
    p_m^(gamma_neg - 1)`` (else None), into ``focus_out`` and ``below_out`` or ``p_m`` itself.
    With ``m > 0`` both are 0 below the margin: where ``p_m^0`` would be 1 there, they are the
    indicator ``[p > m]``."""
    if m == 0:
        return _power(p_m, gn, focus_out), None
    if gn == 0:
        return np.greater(p_m, 0, out=focus_out), None   # [p > m]
    if o.detach:
        return _power(p_m, gn, focus_out), None
    if gn == 1:
        return p_m, np.greater(p_m, 0, out=below_out)     # p_m^0, 0 below the margin
    if gn == 2:
        return np.multiply(p_m, p_m, out=focus_out), p_m
    if gn == 3:
        square = np.multiply(p_m, p_m, out=below_out)
        return np.multiply(square, p_m, out=focus_out), square
    if gn == 4:
        square = np.multiply(p_m, p_m, out=below_out)
        focus = np.multiply(square, square, out=focus_out)
        return focus, np.multiply(square, p_m, out=square)
    focus = np.power(p_m, gn, out=focus_out)
    # p_m^(gamma_neg - 1) = p_m^gamma_neg / p_m, and max(p_m, tiny) makes it 0 (not 0 / 0) where
    # p_m = 0: times log A (-> -p_m) its limit there is 0 for every gamma_neg > 0
    return focus, np.divide(focus, np.maximum(p_m, o.tiny, out=below_out), out=below_out)

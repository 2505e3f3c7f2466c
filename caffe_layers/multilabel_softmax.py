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

How it is computed: with ``z = x - max(x)``, ``S = sum(exp z)`` and ``q = k t'`` (``k`` per
position), the loss of a position is ``sum(q) log S - k sum(t' z)`` and the gradient
``exp(z) sum(q) / S - k t'`` (plus the smoothing terms), so

- class-index targets never become one-hot arrays: ``z`` is needed at the label only;
- multi-hot targets, mostly zeros, are visited at their non-zeros only (``SPARSE_TARGETS``);
- in those two cases, without smoothing, ``exp(x)`` is taken without the shift when no
  position's maximum is outside [-30, 60] (nothing can overflow), and ``log S`` is taken of the
  sum times ``exp(-max(x))``: one pass over the block fewer, the same accuracy;
- the blob is walked in blocks of whole class vectors (``caffe_layers.blocks``) with scratch
  arrays reused from block to block, and the gradient is written once.
"""
from collections import namedtuple

import numpy as np

from .blocks import Scratch, as_ncs, block_slices

SPARSE_TARGETS = 1 / 16  # dense targets with at most this fraction of non-zeros: visit only those

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


def multilabel_softmax_loss(scores, targets, *, axis=1, target_normalization="count", label_smoothing=0.0,
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
    dtype = np.result_type(scores.dtype, np.float32)  # float32 blobs stay float32, float64 stays
    x_all = scores.reshape(ncs)
    index = is_index_target(scores.shape, targets.shape, axis)
    t_all = targets.reshape((ncs[0], 1, ncs[2]) if index else ncs)
    grad_all = None if grad_out is None else grad_out.reshape(ncs)
    prob_all = None if prob_out is None else prob_out.reshape(ncs)
    if class_weights is not None:
        class_weights = np.asarray(class_weights, dtype=dtype).reshape(1, num_classes, 1)
    position_weights = None
    if weights is not None:
        positions = scores.shape[:axis] + scores.shape[axis + 1:]
        weights = np.asarray(weights, dtype=dtype)
        weights = weights.reshape(weights.shape + (1,) * (len(positions) - weights.ndim))
        position_weights = np.broadcast_to(weights, positions).reshape(ncs[0], 1, ncs[2])
    options = _Options(num_classes, target_normalization, float(label_smoothing), loss == "kl",
                       class_weights, ignore_label)

    full = Scratch(dtype)            # (n, C, s) arrays: e, z (when shifted), two for dense targets
    flags = Scratch(np.bool_)        # (n, C, s): where dense targets are non-zero
    # (n, 1, s) arrays; in float64 for target_normalization "sum", where 1 / sum(t') of tiny
    # float32 targets (1e-40) would overflow float32 although every q = t' / sum(t') is <= 1
    per_position = Scratch(np.float64 if target_normalization == "sum" else dtype)
    total = 0.0
    valid = 0
    for n, s in block_slices(ncs):
        x = x_all[n, :, s]
        t = t_all[n, :, s]
        pos = per_position.arrays((x.shape[0], 1, x.shape[2]), 8)
        x_max, sum_e, log_sum = pos[:3]
        np.maximum.reduce(x, axis=1, out=x_max, keepdims=True)
        flag = None if index else flags.arrays(x.shape, 1)[0]
        nonzero = None if index else _nonzero_targets(t, flag)
        # The loss needs z = x - max(x) at the target classes only when the targets are class
        # indices or few non-zeros and there is no smoothing; then, if no exp can overflow,
        # exp(x) is taken as it is and its sum rescaled by exp(-max(x)) per position.
        if (index or nonzero is not None) and not options.eps and _exp_is_safe(x_max):
            work = full.arrays(x.shape, 1)
            e, z = work[0], None
            np.exp(x, out=e)
            np.add.reduce(e, axis=1, out=sum_e, keepdims=True)  # (n, C, s) -> (n, 1, s)
            np.log(np.multiply(sum_e, np.exp(np.negative(x_max, out=log_sum), out=log_sum), out=log_sum),
                   out=log_sum)                                 # log sum(exp(x - max(x)))
        else:
            work = full.arrays(x.shape, 2 if index or nonzero is not None else 4)
            e, z = work[:2]
            np.subtract(x, x_max, out=z)
            np.exp(z, out=e)
            np.add.reduce(e, axis=1, out=sum_e, keepdims=True)
            np.log(sum_e, out=log_sum)
        if prob_all is not None:
            np.multiply(e, np.divide(1, sum_e, out=pos[3]), out=prob_all[n, :, s])
        w = None if position_weights is None else position_weights[n, :, s]
        grad = None if grad_all is None else grad_all[n, :, s]
        if index:
            block_loss, block_valid = _index_block(options, t, x, z, e, w, work, pos, grad)
        else:
            block_loss, block_valid = _dense_block(options, t, flag, nonzero, x, z, e, w, work, pos, grad)
        total += block_loss
        valid += block_valid
    return SoftmaxSums(total, valid)


def _exp_is_safe(x_max):
    """True when exp(x) neither overflows nor loses the largest term of any position: every
    position's maximum is in [-30, 60], so its sum of exp is in [exp(-30), C exp(60)]."""
    return x_max.size == 0 or (float(np.min(x_max)) >= -30.0 and float(np.max(x_max)) <= 60.0)


def _nonzero_targets(t, flags):
    """The non-zero entries of a block of dense targets ``(n, C, s)``, or None when more than
    ``SPARSE_TARGETS`` of them are non-zero: ``(flat index, n index, class, s index, position)``
    with position the index into the block's ``(n, 1, s)`` arrays, raveled."""
    np.not_equal(t, 0, out=flags)
    where = np.flatnonzero(flags)
    if where.size > SPARSE_TARGETS * t.size:
        return None
    n_b, num_classes, s_b = t.shape
    s_i = where % s_b
    c_i = where // s_b
    n_i = c_i // num_classes
    c_i %= num_classes
    return where, n_i, c_i, s_i, n_i * s_b + s_i


class _Options:
    """The loss options, with the smoothing constants worked out once."""

    def __init__(self, num_classes, target_normalization, label_smoothing, kl, class_weights, ignore_label):
        self.num_classes = num_classes
        self.target_normalization = target_normalization
        self.eps = label_smoothing
        self.kl = kl
        self.class_weights = class_weights
        self.ignore_label = ignore_label
        # with smoothing, q = (1 - eps) q_raw + (eps / C) sum(q_raw)
        self.keep = 1.0 - label_smoothing
        self.spread = label_smoothing / num_classes


def _index_block(o, labels, x, z, e, w, work, pos, grad):
    """Loss and valid count of a block with class-index targets ``labels`` ``(n, 1, s)``.

    q is ``v`` at the label (``v`` the label's class weight, or 1), smoothed:
    ``(1 - eps) v`` at the label plus ``eps v / C`` everywhere, so ``sum(q) = v``.
    z: ``x - max(x)``, or None when only exp(x) was computed (then no smoothing).
    """
    x_max, sum_e, log_sum, v, scaled, tmp = pos[:6]
    kept = None
    if o.ignore_label is not None:
        kept = labels != o.ignore_label
        labels = np.where(kept, labels, 0)
    labels = labels.astype(np.intp)
    if o.class_weights is None:
        v[...] = 1
    else:
        np.copyto(v, np.take_along_axis(o.class_weights[0, :, 0], labels.ravel(), 0).reshape(v.shape))
        if o.target_normalization == "sum":  # q / sum(q): 1 at the label, or 0 if its weight is 0
            np.greater(v, 0, out=v)
    has_target = v > 0
    if kept is not None:
        has_target &= kept
        np.multiply(v, kept, out=v)
    # -sum_c q_c log p_c = sum(q) log S - sum_c q_c z_c, with sum(q) = v
    if z is None:
        z_label = np.subtract(np.take_along_axis(x, labels, axis=1), x_max, out=tmp)
    else:
        z_label = np.take_along_axis(z, labels, axis=1)
    np.multiply(z_label, o.keep, out=tmp)
    if o.eps:
        np.add(tmp, np.multiply(np.add.reduce(z, axis=1, keepdims=True), o.spread, out=scaled), out=tmp)
    per_position = np.multiply(v, np.subtract(log_sum, tmp, out=tmp), out=tmp)
    if o.kl:  # + sum_c q_c log q_c: (1 - eps + eps/C) v at the label, eps v / C at the C - 1 others
        per_position += _x_log_x((o.keep + o.spread) * v)
        if o.eps:
            per_position += (o.num_classes - 1) * _x_log_x(o.spread * v)
    if w is not None:
        np.multiply(v, w, out=v)           # from here on v carries the position weight
        np.multiply(per_position, w, out=per_position)
    if grad is not None:
        # sum(q) p - q = v e / S - (1 - eps) v [at the label] - eps v / C; grad is written once
        np.divide(v, sum_e, out=scaled)
        if o.eps:
            np.subtract(np.multiply(e, scaled, out=e), np.multiply(v, o.spread, out=scaled), out=grad)
        else:
            np.multiply(e, scaled, out=grad)
        at = np.take_along_axis(grad, labels, axis=1)
        np.put_along_axis(grad, labels, at - o.keep * v, axis=1)
    return float(np.add.reduce(per_position, axis=None)), int(np.count_nonzero(has_target))


def _dense_block(o, t, flag, nonzero, x, z, e, w, work, pos, grad):
    """Loss and valid count of a block with dense targets ``t`` ``(n, C, s)``.

    q = k t' with t' = t * class_weights and k per position (1 / count, 1 / sum(t') or 1), then
    smoothed: ``(1 - eps) k t' + (eps / C) mass`` with ``mass = sum(q) = k sum(t')``.
    flag: ``t != 0``. nonzero: None, or ``_nonzero_targets`` of a block with few non-zero
    targets (multi-hot targets are mostly zeros): then the sums over targets and their part of
    the gradient visit only those. z: ``x - max(x)``, or None when only exp(x) was computed
    (then nonzero is given and there is no smoothing).
    """
    x_max, sum_e, log_sum, mass, k, tz, scaled, count = pos
    sparse = nonzero is not None
    if sparse:
        where, n_i, c_i, s_i, position = nonzero
        t_nz = t[n_i, c_i, s_i]
        if o.class_weights is not None:
            t_nz = t_nz * o.class_weights[0, c_i, 0]
        positions = mass.size
        if z is None:
            z_nz = x[n_i, c_i, s_i] - x_max.reshape(-1)[position]
        else:
            z_nz = z.reshape(-1)[where]
        mass.reshape(-1)[:] = np.bincount(position, weights=t_nz, minlength=positions)   # sum(t')
        count.reshape(-1)[:] = np.bincount(position, minlength=positions)              # non-zero t
        tz.reshape(-1)[:] = np.bincount(position, weights=t_nz * z_nz, minlength=positions)  # sum(t' z)
    else:
        b0, b1 = work[2:4]
        t_w = t if o.class_weights is None else np.multiply(t, o.class_weights, out=b1)
        np.add.reduce(t_w, axis=1, out=mass, keepdims=True)
        np.add.reduce(flag, axis=1, out=count, keepdims=True)
        np.add.reduce(np.multiply(t_w, z, out=b0), axis=1, out=tz, keepdims=True)
    if o.target_normalization == "count":
        np.copyto(k, count)
    elif o.target_normalization == "sum":
        np.copyto(k, mass)
    else:
        k[...] = 1
    if o.target_normalization != "none":
        np.divide(1, k, out=k, where=k > 0)  # a position without positive has t' = 0: any k will do
        np.multiply(mass, k, out=mass)
    # -sum_c q_c log p_c = mass log S - (1 - eps) k sum(t' z) - (eps / C) mass sum(z)
    per_position = np.multiply(mass, log_sum, out=scaled)
    per_position -= o.keep * k * tz
    if o.eps:
        per_position -= o.spread * mass * np.add.reduce(z, axis=1, keepdims=True)
    if o.kl:  # + sum_c q_c log q_c, with 0 log 0 = 0
        if sparse:  # q = (1 - eps) k t' + q0 where t != 0, q0 = (eps / C) mass elsewhere
            q0 = o.spread * mass
            q_nz = o.keep * k.reshape(-1)[position] * t_nz + q0.reshape(-1)[position]
            per_position += np.bincount(position, weights=_x_log_x(q_nz), minlength=positions).reshape(mass.shape)
            per_position += (o.num_classes - count) * _x_log_x(q0)
        else:
            q = np.add(np.multiply(t_w, o.keep * k, out=b0), o.spread * mass, out=b0)
            per_position += np.add.reduce(_x_log_x(q, out=z), axis=1, keepdims=True)  # z is no longer needed
    valid = int(np.count_nonzero(mass))
    if w is not None:
        per_position *= w
    loss = float(np.add.reduce(per_position, axis=None))
    if grad is not None:
        # sum(q) p - q = e mass / S - ((1 - eps) k t' + eps mass / C), times the position weight;
        # grad is written once, then (sparse targets) corrected where t != 0
        np.divide(mass, sum_e, out=scaled)
        np.multiply(k, o.keep, out=k)
        if w is not None:
            np.multiply(scaled, w, out=scaled)
            np.multiply(k, w, out=k)
        if sparse:
            if o.eps:
                np.subtract(np.multiply(e, scaled, out=e), (o.spread * mass) if w is None else (o.spread * mass * w),
                            out=grad)
            else:
                np.multiply(e, scaled, out=grad)
            grad[n_i, c_i, s_i] -= k.reshape(-1)[position] * t_nz
        else:
            q = np.multiply(t_w, k, out=b0)
            if o.eps:
                np.add(q, (o.spread * mass) if w is None else (o.spread * mass * w), out=q)
            np.subtract(np.multiply(e, scaled, out=e), q, out=grad)
    return loss, valid


def _x_log_x(q, out=None):
    """``q log q`` element-wise for ``q >= 0``, with ``0 log 0 = 0``, into ``out`` (not ``q``)."""
    # log(max(q, tiny)) is finite, and q times it is 0 where q is 0
    log_q = np.log(np.maximum(q, np.finfo(q.dtype).tiny, out=out), out=out)
    return np.multiply(q, log_q, out=log_q)

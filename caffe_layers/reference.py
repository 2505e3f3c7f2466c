"""Plain float64 references of the losses: the formulas as the papers write them.

These are the readable specification that the fast blocked kernels (``caffe_layers.focal``,
``caffe_layers.asymmetric``, ``caffe_layers.multilabel_softmax``) are tested against. They
take the same keyword options as the kernels, compute in float64 with ``np.exp`` and ``np.log``
element by element (the sigmoid losses, as whole-array formulas in which each element's loss
depends on its own score and target only) or one position at a time (the softmax loss), and
return the loss of every element or position, not its sum. They trade speed and memory for
legibility: use them to check, never to train.

The only liberties with the written formulas keep float64 honest at large ``|x|``:
``log p = -log(1 + exp(-x))`` is evaluated as ``-np.logaddexp(0, -x)`` (the same quantity,
without ``exp`` overflowing), and ``1 - p`` as ``sigmoid(-x)`` (the same quantity, without the
cancellation of ``1 - p``).
"""
import numpy as np


def sigmoid(x):
    """``p = 1 / (1 + exp(-x))`` in float64; ``exp`` may overflow to inf, giving the limit 0."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def log_sigmoid(x):
    """``log p = -log(1 + exp(-x))`` in float64 (``np.logaddexp(0, -x)`` is ``log(1 + exp(-x))``)."""
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


def element_weights(shape, class_weights=None, weights=None, ignore=None):
    """``w`` = class weight x sample or element weight x ignore mask, broadcast to ``shape``
    ``(N, C, d1..dk)``: class_weights ``(C,)``; weights ``(N,)`` (one per sample) or ``shape``;
    ignore: a boolean array of ``shape``, True where the target is ignored."""
    w = np.ones(shape)
    if class_weights is not None:
        w = w * np.reshape(np.asarray(class_weights, dtype=np.float64), (1, -1) + (1,) * (len(shape) - 2))
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim == 1 and len(shape) > 1:  # one weight per sample
            weights = weights.reshape((-1,) + (1,) * (len(shape) - 1))
        w = w * weights
    if ignore is not None:
        w = w * ~ignore
    return w


def _ignored(targets, ignore_label):
    """(targets with ignored entries set to 0, boolean mask of the ignored entries or None)."""
    targets = np.asarray(targets, dtype=np.float64)
    if ignore_label is None:
        return targets, None
    ignore = targets == ignore_label
    return np.where(ignore, 0.0, targets), ignore


def sigmoid_focal_elements(scores, targets, *, gamma=2.0, alpha=None, class_weights=None, weights=None,
                           ignore_label=None):
    """Focal loss of every element (Lin et al. 2017, with torchvision's ``alpha_t``), float64::

        p       = sigmoid(x)
        ce      = -(t log p + (1 - t) log(1 - p))
        p_t     = p t + (1 - p)(1 - t)
        alpha_t = alpha t + (1 - alpha)(1 - t)        (1 when alpha is None)
        loss    = w alpha_t (1 - p_t)^gamma ce

    scores, targets: ``(N, C, d1..dk)``; alpha: None, a float, or ``C`` floats. ``w`` as in
    ``element_weights``; an ignored element has loss 0.
    """
    x = np.asarray(scores, dtype=np.float64)
    t, ignore = _ignored(targets, ignore_label)
    p = sigmoid(x)
    ce = -(t * log_sigmoid(x) + (1 - t) * log_sigmoid(-x))  # log(1 - p) = log sigmoid(-x)
    p_t = p * t + (1 - p) * (1 - t)
    if alpha is None:
        alpha_t = 1.0
    else:
        alpha = np.asarray(alpha, dtype=np.float64)
        if alpha.ndim:
            alpha = alpha.reshape((1, -1) + (1,) * (x.ndim - 2))
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
    w = element_weights(x.shape, class_weights, weights, ignore)
    return w * alpha_t * (1 - p_t) ** gamma * ce


def asymmetric_elements(scores, targets, *, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, class_weights=None,
                        weights=None, ignore_label=None, focusing_scores=None):
    """Asymmetric loss of every element (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label
    Classification"), float64::

        p    = sigmoid(x)
        p_m  = max(p - m, 0)                     m = clip: the shifted probability of a negative
        loss = -w [ t (1 - p)^gamma_pos log p  +  (1 - t) p_m^gamma_neg log(1 - p_m) ]

    scores, targets: ``(N, C, d1..dk)``, targets in [0, 1] (binary or soft). ``w`` as in
    ``element_weights``; an ignored element has loss 0. Below the margin (``p <= m``) the
    negative term is 0.

    focusing_scores: None, or scores at which the focusing factors ``(1 - p)^gamma_pos`` and
    ``p_m^gamma_neg`` are evaluated instead of ``scores``. Differentiating with it held fixed at
    the scores gives the gradient of ``detach_focal_weight`` (the factors constant in backward).
    """
    x = np.asarray(scores, dtype=np.float64)
    t, ignore = _ignored(targets, ignore_label)
    p = sigmoid(x)
    p_m = np.maximum(p - clip, 0.0)
    log_p = log_sigmoid(x)
    if clip > 0:
        log_1_minus_p_m = np.log(1.0 - p_m)  # 1 - p_m >= m: its rounding error is at most eps / m relative
    else:
        log_1_minus_p_m = log_sigmoid(-x)  # p_m = p: log(1 - p) = log sigmoid(-x)
    x_f = x if focusing_scores is None else np.asarray(focusing_scores, dtype=np.float64)
    p_f = sigmoid(x_f)
    focus_pos = sigmoid(-x_f) ** gamma_pos  # (1 - p)^gamma_pos, 1 - p = sigmoid(-x)
    focus_neg = np.maximum(p_f - clip, 0.0) ** gamma_neg  # p_m^gamma_neg
    w = element_weights(x.shape, class_weights, weights, ignore)
    return -w * (t * focus_pos * log_p + (1 - t) * focus_neg * log_1_minus_p_m)


def log_softmax(v):
    """``log(softmax(v))`` of a vector: ``v - max(v) - log(sum(exp(v - max(v))))``."""
    v = np.asarray(v, dtype=np.float64)
    z = v - np.max(v)
    return z - np.log(np.sum(np.exp(z)))


def multilabel_softmax_positions(scores, targets, *, axis=1, target_normalization="count", label_smoothing=0.0,
                                 loss="cross_entropy", class_weights=None, weights=None, ignore_label=None):
    """Multi-label softmax loss of every position (Mahajan et al. 2018), float64, computed one
    position (vector of ``C`` scores along ``axis``) at a time::

        t'   = t * class_weights              dense targets, or a one-hot of a class index
        q    = t' / M                         M: "count" = number of non-zero t, "sum" = sum(t'),
                                              "none" = 1; a position without positive adds 0
        q   <- (1 - eps) q + eps sum(q) / C   label smoothing
        loss = w ( -sum_c q_c log softmax(x)_c  [+ sum_c q_c log q_c for "kl"] )

    targets: dense, of the scores' shape, or class indices, of the scores' shape without
    ``axis``. weights: None, ``(N,)`` or the positions' shape. Returns an array of the
    positions' shape (the scores' shape without ``axis``).
    """
    x = np.moveaxis(np.asarray(scores, dtype=np.float64), axis, -1)
    positions = x.shape[:-1]
    num_classes = x.shape[-1]
    t = np.asarray(targets, dtype=np.float64)
    dense = t.shape == np.moveaxis(np.empty(x.shape), -1, axis).shape
    t = np.moveaxis(t, axis, -1) if dense else t.reshape(positions)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        weights = np.broadcast_to(weights.reshape(weights.shape + (1,) * (len(positions) - weights.ndim)), positions)
    out = np.zeros(positions)
    for pos in np.ndindex(*positions):
        if dense:
            raw = t[pos].copy()
        else:
            if ignore_label is not None and t[pos] == ignore_label:
                continue
            raw = np.zeros(num_classes)
            raw[int(t[pos])] = 1.0
        weighted = raw * (1.0 if class_weights is None else np.asarray(class_weights, dtype=np.float64))
        if target_normalization == "count":
            m = np.count_nonzero(raw)
        elif target_normalization == "sum":
            m = weighted.sum()
        else:
            m = 1.0
        if m == 0:
            continue
        q = weighted / m
        q = (1 - label_smoothing) * q + label_smoothing * q.sum() / num_classes
        value = -np.sum(q * log_softmax(x[pos]))
        if loss == "kl":
            value += sum(qc * np.log(qc) for qc in q if qc > 0)
        out[pos] = value * (1.0 if weights is None else weights[pos])
    return out

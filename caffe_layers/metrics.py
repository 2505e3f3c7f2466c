"""Multi-label metrics on NumPy arrays: per batch in NumPy, per data set with scikit-learn.

Arrays are ``(N, C)``: scores (higher means more likely), ``positive`` (bool, the multi-hot
targets) and ``valid`` (bool, False where a target is the ``ignore_label``; None keeps all).
An entry that is not valid is left out of every count, as if that sample had no such class.

Batch metrics (used by the ``MultiLabelMetrics`` layer, vectorised over classes):
  ``average_precision``  scikit-learn's ``average_precision_score``, one value per class;
  ``f1_counts`` + ``micro_f1`` / ``macro_f1``;  ``precision_recall_at_k``.
Data-set metrics: ``report`` and ``pr_curves`` call scikit-learn (imported there only) class by class;
``evaluate`` checks scores, labels and thresholds and returns the figures ``caffe-layers evaluate``
prints (the tool and the demo both use it).

Undefined values are NaN: the AP of a class without positives, the F1 of a class with neither
positives nor predictions (scikit-learn's ``zero_division=np.nan``); means leave them out.
"""
import math
import warnings

import numpy as np

from .class_weights import label_counts
from .decoding import apply_thresholds, top_k_mask


def all_valid(positive, valid):
    return np.ones(np.shape(positive), bool) if valid is None else np.asarray(valid, bool)


def average_precision(scores, positive, valid=None):
    """Per-class AP ``(C,)`` float64: ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds.

    Each distinct score is a threshold (tied scores enter together), as in scikit-learn;
    NaN for a class with no valid positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    valid = all_valid(positive, valid)
    positive = np.asarray(positive, bool) & valid
    n = scores.shape[0]
    if n == 0:
        return np.full(scores.shape[1], np.nan)
    order = np.argsort(-scores, axis=0, kind="stable")    # (N, C): each column high to low
    s = np.take_along_axis(scores, order, axis=0)
    tp = np.take_along_axis(positive, order, axis=0)
    fp = np.take_along_axis(valid, order, axis=0) & ~tp
    tp_cum = np.cumsum(tp, axis=0)
    fp_cum = np.cumsum(fp, axis=0)
    last = np.ones(s.shape, bool)                          # last row of each run of equal scores
    last[:-1] = s[:-1] != s[1:]
    rows = np.broadcast_to(np.arange(n)[:, None], s.shape)
    # group_end[i] = first j >= i with last[j]: the threshold at which row i is admitted
    group_end = np.minimum.accumulate(np.where(last, rows, n)[::-1], axis=0)[::-1]
    tp_end = np.take_along_axis(tp_cum, group_end, axis=0)
    fp_end = np.take_along_axis(fp_cum, group_end, axis=0)
    precision = tp_end / np.maximum(tp_end + fp_end, 1)
    total = tp_cum[-1]
    # each positive adds 1/P of recall at its group's threshold, where precision is `precision`
    ap = np.sum(tp * precision, axis=0) / np.maximum(total, 1)
    return np.where(total > 0, ap, np.nan)


def nan_mean(values):
    """Mean of the non-NaN values; NaN when there are none (no warning)."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def f1_counts(predicted, positive, valid=None):
    """Per-class true positives, false positives and false negatives, each ``(C,)``."""
    valid = all_valid(positive, valid)
    predicted = np.asarray(predicted, bool) & valid
    positive = np.asarray(positive, bool) & valid
    tp = np.sum(predicted & positive, axis=0)
    return tp, np.sum(predicted, axis=0) - tp, np.sum(positive, axis=0) - tp


def _ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def micro_f1(tp, fp, fn):
    """``2 TP / (2 TP + FP + FN)`` over all classes; NaN with no positives and no predictions."""
    return float(_ratio(2 * np.sum(tp), 2 * np.sum(tp) + np.sum(fp) + np.sum(fn)))


def macro_f1(tp, fp, fn):
    """Mean over classes of ``2 TP / (2 TP + FP + FN)``, leaving out classes where it is 0/0."""
    return nan_mean(_ratio(2 * tp, 2 * tp + fp + fn))


def precision_recall_at_k(scores, positive, k, valid=None):
    """(precision@k, recall@k) averaged over samples.

    Per sample, the ``k`` highest-scoring valid classes are predicted (ties: lower index first).
    precision@k = hits / min(k, valid classes), over samples with a valid class;
    recall@k = hits / positives, over samples with a positive. NaN when no sample counts.
    """
    valid = all_valid(positive, valid)
    positive = np.asarray(positive, bool) & valid
    chosen = top_k_mask(np.where(valid, np.asarray(scores, np.float64), -np.inf), k) & valid
    hits = np.sum(chosen & positive, axis=1)
    n_valid = np.sum(valid, axis=1)
    n_pos = np.sum(positive, axis=1)
    precision = _ratio(hits, np.minimum(k, n_valid))
    recall = _ratio(hits, n_pos)
    return nan_mean(precision), nan_mean(recall)


def report(scores, positive, predicted, valid=None):
    """Data-set metrics with scikit-learn, class by class over the valid entries.

    Returns a dict of ``(C,)`` arrays ``ap``, ``precision``, ``recall``, ``f1``, ``support``
    (valid positives) and an ``overall`` dict: ``mAP`` (mean AP over classes with a positive),
    ``micro_*`` (all valid entries pooled) and ``macro_*`` (means of the per-class values that
    are defined).
    """
    from sklearn.metrics import average_precision_score   # scikit-learn only for data-set metrics
    scores = np.asarray(scores, np.float64)
    valid = all_valid(positive, valid)
    positive = np.asarray(positive, bool)
    predicted = np.asarray(predicted, bool)
    num_classes = scores.shape[1]
    out = {name: np.full(num_classes, np.nan) for name in ("ap", "precision", "recall", "f1")}
    out["support"] = np.sum(positive & valid, axis=0)
    for c in range(num_classes):
        kept = valid[:, c]
        y, s, p = positive[kept, c], scores[kept, c], predicted[kept, c]
        if y.any():
            out["ap"][c] = average_precision_score(y, s)
        if y.size:
            (out["precision"][c], out["recall"][c], out["f1"][c]), _ = _binary_prf(y, p)
    y, p = positive[valid], predicted[valid]                  # pooled: (valid entries,)
    (micro_p, micro_r, micro_f), _ = _binary_prf(y, p) if y.size else ((np.nan,) * 3, None)
    out["overall"] = {
        "mAP": nan_mean(out["ap"]),
        "micro_precision": micro_p, "micro_recall": micro_r, "micro_f1": micro_f,
        "macro_precision": nan_mean(out["precision"]), "macro_recall": nan_mean(out["recall"]),
        "macro_f1": nan_mean(out["f1"]),
    }
    return out


def evaluate(scores, labels, thresholds=0.5, *, ignore_label=None):
    """The figures of ``caffe-layers evaluate`` for ``(N, C)`` scores and multi-hot labels.

    ``scores``: finite, higher means more likely (the tool passes probabilities); ``labels``:
    ``(N, C)`` of 0, 1 or ``ignore_label`` (entries equal to it are left out; it may not be 0 or
    1); ``thresholds``: one finite number or ``(C,)``, a class is predicted when its score is >=
    its threshold. Returns ``report``'s dict (``ap``, ``precision``, ``recall``, ``f1``,
    ``support``, ``overall``) plus ``thresholds`` ``(C,)``, ``predicted`` (predictions per class,
    ``(C,)``) and ``num_samples``. Bad input raises ``ValueError`` naming the argument.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {scores.shape}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have the scores' shape {scores.shape}, got {labels.shape}")
    if not np.isfinite(scores).all():
        row, col = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"scores must be finite; scores[{row}, {col}] is {scores[row, col]}")
    if ignore_label is not None and ignore_label in (0, 1):
        raise ValueError(f"ignore_label {ignore_label} would leave out every "
                         f"{'negative' if ignore_label == 0 else 'positive'} label")
    label_counts(labels, ignore_label)                       # labels are 0, 1 or ignore_label
    cut = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (scores.shape[1],)) \
        if np.ndim(thresholds) == 0 or np.shape(thresholds) == (scores.shape[1],) else None
    if cut is None:
        raise ValueError(f"thresholds must be one number or one per class ({scores.shape[1]}), "
                         f"got shape {np.shape(thresholds)}")
    if not all(math.isfinite(t) for t in cut):
        raise ValueError(f"thresholds must be finite, got {thresholds!r}")
    valid = None if ignore_label is None else labels != ignore_label
    predicted = apply_thresholds(scores, cut)
    out = report(scores, labels == 1, predicted, valid)
    out["thresholds"] = np.array(cut)
    out["predicted"] = np.sum(predicted & all_valid(labels, valid), axis=0)
    out["num_samples"] = scores.shape[0]
    return out


def _binary_prf(y, p):
    from sklearn.metrics import precision_recall_fscore_support
    with warnings.catch_warnings():  # 0/0 is reported as NaN, on purpose
        warnings.simplefilter("ignore")
        precision, recall, f1, support = precision_recall_fscore_support(
            y, p, average="binary", pos_label=True, zero_division=np.nan)
    return (float(precision), float(recall), float(f1)), support


def pr_curves(scores, positive, valid=None):
    """Precision-recall curves: ``{c: (precision, recall)}`` for classes with a positive, and
    ``"micro"``: the curve of all valid entries pooled (None without any positive)."""
    from sklearn.metrics import precision_recall_curve
    scores = np.asarray(scores, np.float64)
    valid = all_valid(positive, valid)
    positive = np.asarray(positive, bool)
    curves = {}
    for c in range(scores.shape[1]):
        kept = valid[:, c]
        if positive[kept, c].any():
            precision, recall, _ = precision_recall_curve(positive[kept, c], scores[kept, c])
            curves[c] = (precision, recall)
    pooled = positive[valid]
    curves["micro"] = (precision_recall_curve(pooled, scores[valid])[:2] if pooled.any() else None)
    return curves

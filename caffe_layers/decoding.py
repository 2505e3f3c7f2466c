"""Turning a net's ``(N, C)`` scores into label sets, in NumPy.

- ``activate``: sigmoid, softmax (over classes) or none.
- ``calibrate_thresholds`` on a validation set, per class: the threshold that maximises the
  class's F1, or the lowest threshold that reaches a target precision; ``apply_thresholds``.
- ``top_k_mask``: each sample's ``k`` best classes.
- ``cumulative_mass_mask`` for softmax-trained models: the smallest set of classes whose
  probability mass reaches a level, with optional minimum and maximum counts.
- ``label_sets``: a ``(N, C)`` bool mask -> one list of class indices per sample.

A class is predicted when its score is >= its threshold. Thresholds are kept in a JSON file
(written by ``caffe-layers calibrate``; read by ``caffe-layers evaluate`` / ``predict`` and by the
``MultiLabelMetrics`` layer's ``threshold`` key)::

    {"thresholds": [0.31, 0.62, 0.5],     one number per class, in class order (required)
     "classes": ["cat", "dog", "bird"],   class names, same length (optional)
     "method": "f1"}                      how they were chosen (optional, for the reader)
"""
import json
import math
import os
from collections import namedtuple

import numpy as np

from . import files
from .focal import sigmoid
from .multilabel_softmax import softmax

ACTIVATIONS = ("sigmoid", "softmax", "none")
CALIBRATION_METHODS = ("f1", "precision")
MASS_TOLERANCE = 1e-6  # float32 probabilities that should sum to a level may fall short by rounding

Calibration = namedtuple("Calibration", "thresholds f1 precision recall note")
Calibration.__doc__ = """Per class ``(C,)`` arrays: the thresholds, and the validation F1, precision and
recall at them (NaN for a class without positives); ``note``: C strings, "" or why not calibrated."""


def activate(scores, activation):
    """``(N, C)`` scores -> float64 ``sigmoid``, ``softmax`` over axis 1, or ``none`` (a copy)."""
    scores = np.asarray(scores, dtype=np.float64)
    if activation == "sigmoid":
        return sigmoid(scores)
    if activation == "softmax":
        return softmax(scores, axis=1)
    if activation == "none":
        return scores.copy()
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)} (got {activation!r})")


def calibrate_thresholds(scores, positive, method="f1", target_precision=None, valid=None, default=0.5):
    """Per-class thresholds from a validation set; returns a ``Calibration``.

    Candidate thresholds are the scores of the class's positives (lowering a threshold to a
    negative's score only adds false positives). ``method``:
      "f1": the candidate with the highest F1 (the lowest of equal ones);
      "precision": the lowest candidate whose precision is >= ``target_precision``, i.e. the
      most recall at that precision. A class that never reaches it gets a threshold just above
      its highest score: it is never predicted on this set.
    A class with no valid positive keeps ``default``. ``valid``: None or ``(N, C)`` bool.
    """
    from sklearn.metrics import precision_recall_curve   # scikit-learn only for calibration
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {', '.join(CALIBRATION_METHODS)} (got {method!r})")
    if method == "precision" and not (target_precision is not None and 0 < target_precision <= 1):
        raise ValueError(f"method 'precision' needs a target precision in (0, 1] (got {target_precision!r})")
    if not math.isfinite(default):
        raise ValueError(f"default threshold must be a finite number (got {default!r})")
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, bool)
    valid = np.ones(positive.shape, bool) if valid is None else np.asarray(valid, bool)
    num_classes = scores.shape[1]
    out = Calibration(np.full(num_classes, float(default)), *(np.full(num_classes, np.nan) for _ in range(3)),
                      [""] * num_classes)
    for c in range(num_classes):
        y, s = positive[valid[:, c], c], scores[valid[:, c], c]
        if not y.any():
            out.note[c] = f"no positives: kept {default}"
            continue
        precision, recall, thresholds = precision_recall_curve(y, s)  # thresholds ascending
        precision, recall = precision[:-1], recall[:-1]                # the last point has no threshold
        candidate = np.isin(thresholds, s[y])
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=precision + recall > 0)
        if method == "f1":
            best = int(np.argmax(np.where(candidate, f1, -1.0)))
        else:
            reached = np.flatnonzero(candidate & (precision >= target_precision))
            if not reached.size:
                out.thresholds[c] = np.nextafter(s.max(), np.inf)
                out.precision[c], out.recall[c], out.f1[c] = np.nan, 0.0, 0.0
                out.note[c] = f"precision {target_precision} never reached: never predicted"
                continue
            best = int(reached[0])
        out.thresholds[c] = thresholds[best]
        out.f1[c], out.precision[c], out.recall[c] = f1[best], precision[best], recall[best]
    return out


def apply_thresholds(scores, thresholds):
    """``(N, C)`` bool: ``scores >= thresholds``; thresholds a number or ``(C,)``."""
    return np.asarray(scores) >= np.asarray(thresholds, dtype=np.float64)


def top_k_mask(scores, k):
    """``(N, C)`` bool: each row's ``k`` highest scores; ties go to the lower class index."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def cumulative_mass_mask(probs, mass, min_count=1, max_count=None):
    """``(N, C)`` bool: per row, the fewest classes (highest first) whose probabilities sum to >= ``mass``.

    The count is then clipped to [``min_count``, ``max_count``] (None: no maximum); a row
    whose probabilities never reach ``mass`` takes every class up to ``max_count``. Sums are
    compared with a tolerance of ``MASS_TOLERANCE``. Ties go to the lower class index.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1] (got {mass!r})")
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    max_count = num_classes if max_count is None else max_count
    if not 0 <= min_count <= max_count:
        raise ValueError(f"need 0 <= min_count <= max_count (got {min_count}, {max_count})")
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    # cumulative is non-decreasing: the entries still short of the mass, plus the one that reaches it
    count = np.sum(cumulative < mass - MASS_TOLERANCE, axis=1) + 1
    count = np.clip(count, min_count, min(max_count, num_classes))
    mask = np.zeros(probs.shape, bool)
    np.put_along_axis(mask, order, np.arange(num_classes)[None, :] < count[:, None], axis=1)
    return mask


def label_sets(mask):
    """``(N, C)`` bool -> a list of N lists of class indices."""
    return [np.flatnonzero(row).tolist() for row in np.asarray(mask, bool)]


def save_thresholds(path, thresholds, classes=None, method=None):
    """Write the thresholds JSON file (format in this module's docstring), atomically.

    Refuses non-finite thresholds, which ``load_thresholds`` would refuse to read back."""
    data = {"thresholds": [float(t) for t in np.ravel(thresholds)]}
    bad = [i for i, t in enumerate(data["thresholds"]) if not math.isfinite(t)]
    if bad:
        raise ValueError(f"threshold {bad[0]} is {data['thresholds'][bad[0]]}: thresholds must be finite numbers")
    if classes is not None:
        data["classes"] = list(classes)
    if method is not None:
        data["method"] = method
    files.write_text(path, json.dumps(data, indent=1) + "\n")


def load_thresholds(path, num_classes, who="thresholds", of="the scores"):
    """Read a thresholds JSON file; return ``(thresholds (C,) float64, classes or None)``.

    Errors are ``ValueError`` starting with ``who`` and naming the file; a file with other than
    ``num_classes`` thresholds is rejected, with ``of`` naming what has the classes.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{who} file {path!r} does not exist (relative paths are read from {os.getcwd()!r})")
    with open(path) as handle:
        try:
            data = json.load(handle)
        except ValueError as error:
            raise ValueError(f"{who} file {path!r} is not valid JSON: {error}") from None
    values = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"{who} file {path!r} must hold a JSON object with \"thresholds\": a list of "
                         f"finite numbers, one per class (got {str(data)[:80]})")
    if len(values) != num_classes:
        raise ValueError(f"{who} file {path!r} has {len(values)} thresholds but {of} has {num_classes} classes")
    classes = data.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != num_classes):
        raise ValueError(f"{who} file {path!r}: \"classes\" must be a list of {num_classes} names (got {classes!r})")
    return np.asarray(values, dtype=np.float64), classes

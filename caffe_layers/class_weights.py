"""Per-class weights from the label counts of a data set, for the losses' ``class_weights`` and ``alpha``.

With ``n_c`` the positives of class ``c`` among ``N`` samples (``freq_c = n_c / N``):

``inverse_frequency`` (the seed's recipe)
    ``weight_c = 1 / freq_c``, scaled so that the mean weight over classes is 1.
``effective_number`` (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples")
    ``weight_c = (1 - beta) / (1 - beta^n_c)``, scaled so that the mean weight is 1. ``beta = 0``
    gives equal weights; as ``beta -> 1`` it tends to inverse frequency.

``kind="alpha"`` gives the focal loss's per-class ``alpha`` in [0, 1] instead: the same recipe
weighs the class's positives (count ``n_c``) and its negatives (count ``N - n_c``), and
``alpha_c = w_pos / (w_pos + w_neg)``; for inverse frequency that is ``1 - freq_c``.

The output file is a plain JSON list, which ``"class_weights": "file.json"`` and
``"alpha": "file.json"`` in a loss layer's ``param_str`` read as is.
"""
import json
import math

import numpy as np

from . import files
from .params import describe_bad

METHODS = ("inverse_frequency", "effective_number")
KINDS = ("class_weights", "alpha")


def label_counts(labels, ignore_label=None):
    """``(N, C)`` multi-hot labels -> (positives per class ``(C,)``, valid entries per class ``(C,)``).

    Entries equal to ``ignore_label`` count as neither. Other values must be 0 or 1.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, C) multi-hot, got shape {labels.shape}")
    valid = np.ones(labels.shape, bool) if ignore_label is None else labels != ignore_label
    bad = valid & (labels != 0) & (labels != 1)
    if bad.any():
        allowed = "0 or 1" + ("" if ignore_label is None else f" or the ignore label {ignore_label}")
        raise ValueError(f"labels must be {allowed}; {describe_bad(labels, bad)}")
    return np.sum((labels == 1) & valid, axis=0), np.sum(valid, axis=0)


def _raw_weights(counts, method, beta):
    """Unnormalised weights of ``counts`` (> 0) by ``method``."""
    counts = np.asarray(counts, dtype=np.float64)
    if method == "inverse_frequency":
        return 1.0 / counts                       # 1 / freq up to the common factor N
    if beta == 0:
        return np.ones_like(counts)
    # 1 - beta^n = -expm1(n log beta): exact when beta is close to 1
    return (1.0 - beta) / -np.expm1(counts * np.log(beta))


def class_weights(positives, valid, method="inverse_frequency", beta=0.999, kind="class_weights",
                  min_count=0):
    """Weights ``(C,)`` float64 from per-class positives and valid counts (see ``label_counts``).

    ``min_count``: counts below it are raised to it first (say 1, so a class without positives
    gets the largest weight instead of an error).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if method == "effective_number" and not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1) (got {beta!r})")
    positives = np.asarray(positives, dtype=np.float64)
    negatives = np.maximum(np.asarray(valid, dtype=np.float64) - positives, min_count)
    positives = np.maximum(positives, min_count)
    for name, counts in (("positives", positives),) + ((("negatives", negatives),) if kind == "alpha" else ()):
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(f"classes {empty.tolist()} have no {name}, so their weight is infinite; "
                             f"drop them or set a minimum count (min_count / --min-count 1)")
    w_pos = _raw_weights(positives, method, beta)
    if kind == "alpha":
        w_neg = _raw_weights(negatives, method, beta)
        return w_pos / (w_pos + w_neg)
    return w_pos / w_pos.mean()                    # mean weight 1


def save_weights(path, weights):
    """Write a plain JSON list of floats, atomically; refuses non-finite weights."""
    values = [round(float(w), 8) for w in np.ravel(weights)]
    bad = [i for i, w in enumerate(values) if not math.isfinite(w)]
    if bad:
        raise ValueError(f"weight {bad[0]} is {values[bad[0]]}: weights must be finite numbers")
    files.write_text(path, json.dumps(values) + "\n")

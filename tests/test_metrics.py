"""Batch metrics (NumPy) and data-set metrics against scikit-learn, on data with ties, classes
without positives and ignored entries."""
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from caffe_layers import metrics


def tied_data(rng, n=60, c=7, empty=(2, 5)):
    """Scores rounded to one decimal (many ties), about 30% positives, no positive in `empty` classes."""
    scores = np.round(rng.uniform(size=(n, c)), 1)
    positive = rng.uniform(size=(n, c)) < 0.3
    positive[:, list(empty)] = False
    return scores, positive


def sklearn_ap(scores, positive, valid=None):
    """Per-class AP by scikit-learn over the kept entries; NaN for a class without positives."""
    valid = np.ones(positive.shape, bool) if valid is None else valid
    out = []
    for c in range(scores.shape[1]):
        y, s = positive[valid[:, c], c], scores[valid[:, c], c]
        out.append(average_precision_score(y, s) if y.any() else np.nan)
    return np.array(out)


def test_average_precision_by_hand():
    # ranks 1..4: P@1 = 1 (R 1/2), P@3 = 2/3 (R 1): AP = (1 + 2/3) / 2
    assert metrics.average_precision([[0.9], [0.8], [0.7], [0.6]], [[1], [0], [1], [0]])[0] == pytest.approx(5 / 6)
    # a tie at 0.5 enters at once: P = 1/2 at R = 1/2, then P = 2/3 at R = 1
    assert metrics.average_precision([[0.5], [0.5], [0.1]], [[1], [0], [1]])[0] == pytest.approx(0.5 / 2 + 2 / 3 / 2)


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_equals_sklearn_with_ties_and_empty_classes(seed):
    scores, positive = tied_data(np.random.default_rng(seed))
    ours = metrics.average_precision(scores, positive)
    expected = sklearn_ap(scores, positive)
    assert np.isnan(ours[[2, 5]]).all()
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert metrics.nan_mean(ours) == pytest.approx(np.nanmean(expected), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_average_precision_leaves_out_ignored_entries(seed):
    rng = np.random.default_rng(seed)
    scores, positive = tied_data(rng)
    valid = rng.uniform(size=scores.shape) > 0.25
    np.testing.assert_allclose(metrics.average_precision(scores, positive, valid),
                               sklearn_ap(scores, positive, valid), atol=1e-6)


def test_average_precision_of_float32_scores_and_an_empty_batch():
    rng = np.random.default_rng(7)
    scores, positive = tied_data(rng)
    np.testing.assert_allclose(metrics.average_precision(scores.astype(np.float32), positive),
                               sklearn_ap(scores.astype(np.float32), positive), atol=1e-6)
    assert np.isnan(metrics.average_precision(np.zeros((0, 3)), np.zeros((0, 3), bool))).all()


@pytest.mark.parametrize("seed", range(3))
def test_micro_and_macro_f1_equal_sklearn(seed):
    scores, positive = tied_data(np.random.default_rng(seed))
    predicted = scores >= 0.7
    predicted[:, 5] = False                       # class 5: no positive and no prediction: left out
    counts = metrics.f1_counts(predicted, positive)
    assert metrics.micro_f1(*counts) == pytest.approx(
        f1_score(positive, predicted, average="micro", zero_division=np.nan), abs=1e-6)
    assert metrics.macro_f1(*counts) == pytest.approx(
        f1_score(positive, predicted, average="macro", zero_division=np.nan), abs=1e-6)


def test_f1_with_ignored_entries_equals_sklearn_on_the_kept_ones():
    rng = np.random.default_rng(3)
    scores, positive = tied_data(rng)
    valid = rng.uniform(size=scores.shape) > 0.25
    predicted = scores >= 0.6
    counts = metrics.f1_counts(predicted, positive, valid)
    assert metrics.micro_f1(*counts) == pytest.approx(f1_score(positive[valid], predicted[valid]), abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_class = [f1_score(positive[valid[:, c], c], predicted[valid[:, c], c], zero_division=np.nan)
                     for c in range(scores.shape[1])]
    assert metrics.macro_f1(*counts) == pytest.approx(np.nanmean(per_class), abs=1e-6)


def loop_at_k(scores, positive, valid, k):
    """precision@k and recall@k one sample at a time, with Python sorting."""
    precisions, recalls = [], []
    for s, y, v in zip(scores, positive, valid):
        kept = [c for c in range(len(s)) if v[c]]
        if not kept:
            continue
        best = sorted(kept, key=lambda c: (-s[c], c))[:k]
        hits = sum(bool(y[c]) for c in best)
        precisions.append(hits / len(best))
        n_pos = sum(bool(y[c]) for c in kept)
        if n_pos:
            recalls.append(hits / n_pos)
    return np.mean(precisions), np.mean(recalls)


@pytest.mark.parametrize("k", [1, 2, 3, 9])
def test_precision_and_recall_at_k_equal_a_loop(k):
    rng = np.random.default_rng(k)
    scores, positive = tied_data(rng)
    valid = rng.uniform(size=scores.shape) > 0.2
    valid[0] = False                              # a sample with nothing to rank is left out
    np.testing.assert_allclose(metrics.precision_recall_at_k(scores, positive, k, valid),
                               loop_at_k(scores, positive, valid, k), atol=1e-12)


def test_precision_at_1_by_hand():
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.8]])
    positive = np.array([[0, 1, 1], [0, 1, 1]], bool)
    # sample 0: top class 1 is positive; sample 1: the tie 0.8/0.8 goes to class 0, a negative
    assert metrics.precision_recall_at_k(scores, positive, 1) == pytest.approx((0.5, 0.25))


@pytest.mark.parametrize("seed", range(3))
def test_report_equals_sklearn(seed):
    scores, positive = tied_data(np.random.default_rng(seed))
    predicted = scores >= 0.5
    got = metrics.report(scores, positive, predicted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ap = average_precision_score(positive, scores, average=None)
        expected = {
            "precision": precision_score(positive, predicted, average=None, zero_division=np.nan),
            "recall": recall_score(positive, predicted, average=None, zero_division=np.nan),
            "f1": f1_score(positive, predicted, average=None, zero_division=np.nan),
        }
        overall = {f"{avg}_{name}": fn(positive, predicted, average=avg, zero_division=np.nan)
                   for avg in ("micro", "macro")
                   for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score))}
    has_pos = positive.any(axis=0)
    np.testing.assert_allclose(got["ap"][has_pos], ap[has_pos], atol=1e-6)
    assert np.isnan(got["ap"][~has_pos]).all()
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(got["support"], positive.sum(axis=0))
    assert got["overall"]["mAP"] == pytest.approx(ap[has_pos].mean(), abs=1e-6)
    for name, value in overall.items():
        assert got["overall"][name] == pytest.approx(value, abs=1e-6), name


def test_pr_curves_cover_classes_with_positives_and_the_pooled_curve():
    scores, positive = tied_data(np.random.default_rng(0))
    curves = metrics.pr_curves(scores, positive)
    assert sorted(k for k in curves if k != "micro") == [0, 1, 3, 4, 6]
    precision, recall = curves["micro"]
    assert recall[0] == 1 and recall[-1] == 0 and precision[-1] == 1


@pytest.mark.parametrize("seed", range(2))
def test_evaluate_equals_sklearn_with_per_class_thresholds_and_ignored_entries(seed):
    """The figures the caffe-layers tool prints: sklearn on the kept entries of each class."""
    rng = np.random.default_rng(seed)
    scores = rng.random((60, 4))
    labels = (rng.random((60, 4)) < 0.4).astype(np.float32)
    labels[rng.random((60, 4)) < 0.1] = -1                      # ignored entries
    cut = np.array([0.3, 0.5, 0.7, 0.9])
    got = metrics.evaluate(scores, labels, cut, ignore_label=-1)
    for c in range(4):
        kept = labels[:, c] != -1
        y, s = labels[kept, c] == 1, scores[kept, c]
        assert got["ap"][c] == pytest.approx(average_precision_score(y, s), abs=1e-9)
        assert got["f1"][c] == pytest.approx(f1_score(y, s >= cut[c]), abs=1e-9)
        assert got["precision"][c] == pytest.approx(precision_score(y, s >= cut[c]), abs=1e-9)
        assert got["recall"][c] == pytest.approx(recall_score(y, s >= cut[c]), abs=1e-9)
        assert got["support"][c] == y.sum() and got["predicted"][c] == (s >= cut[c]).sum()
    kept = labels != -1
    assert got["overall"]["micro_f1"] == pytest.approx(f1_score(labels[kept] == 1, (scores >= cut)[kept]), abs=1e-9)
    np.testing.assert_array_equal(got["thresholds"], cut)
    assert got["num_samples"] == 60
    assert metrics.evaluate(scores, labels.clip(0), 0.5)["thresholds"].tolist() == [0.5] * 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(scores=np.full((3, 2), np.nan)), r"scores must be finite; scores\[0, 0\] is nan"),
    (dict(labels=np.full((3, 3), 1.0)), r"labels must have the scores' shape \(3, 2\), got \(3, 3\)"),
    (dict(labels=np.full((3, 2), 2.0)), r"labels must be 0 or 1; 6 are not"),
    (dict(thresholds=float("nan")), "thresholds must be finite"),
    (dict(thresholds=[0.5, 0.5, 0.5]), r"thresholds must be one number or one per class \(2\), got shape \(3,\)"),
    (dict(ignore_label=0), "ignore_label 0 would leave out every negative label"),
])
def test_evaluate_refuses_bad_input(kwargs, message):
    args = dict(scores=np.full((3, 2), 0.5), labels=np.ones((3, 2)), thresholds=0.5, ignore_label=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(args["scores"], args["labels"], args["thresholds"], ignore_label=args["ignore_label"])

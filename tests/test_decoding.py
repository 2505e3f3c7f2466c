"""Decoding: activations, per-class threshold calibration, top-k, cumulative mass, thresholds JSON."""
import json

import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import f1_score

from caffe_layers import decoding


def shifted_classes(rng, n):
    """Probabilities whose best threshold is far from 0.5: classes 0-1 score low, 2-3 high.

    Positives and negatives separate well within a class, but not around 0.5.
    """
    centres = np.array([[0.10, 0.30], [0.15, 0.40], [0.60, 0.85], [0.70, 0.95]])  # (negative, positive)
    positive = rng.uniform(size=(n, 4)) < 0.3
    scores = np.where(positive, centres[:, 1], centres[:, 0]) + rng.normal(scale=0.05, size=(n, 4))
    return np.clip(scores, 0, 1), positive


def test_calibrated_thresholds_beat_a_fixed_half_in_macro_f1_on_held_out_data():
    rng = np.random.default_rng(0)
    val_scores, val_positive = shifted_classes(rng, 400)
    test_scores, test_positive = shifted_classes(rng, 400)
    calibration = decoding.calibrate_thresholds(val_scores, val_positive, "f1")
    fixed = f1_score(test_positive, test_scores >= 0.5, average="macro", zero_division=0)
    calibrated = f1_score(test_positive, decoding.apply_thresholds(test_scores, calibration.thresholds),
                          average="macro", zero_division=0)
    assert fixed < 0.6
    assert calibrated > 0.9
    assert calibration.thresholds[:2].max() < 0.5 < calibration.thresholds[2:].min()


def brute_force(scores, positive, c):
    """Over every distinct score of class c as a threshold: (threshold, precision, recall, F1) rows."""
    rows = []
    for t in np.unique(scores[:, c]):
        predicted = scores[:, c] >= t
        tp = np.sum(predicted & positive[:, c])
        precision, recall = tp / predicted.sum(), tp / positive[:, c].sum()
        f1 = 2 * tp / (predicted.sum() + positive[:, c].sum())
        rows.append((t, precision, recall, f1))
    return rows


@pytest.mark.parametrize("seed", range(4))
def test_f1_calibration_reaches_the_best_f1_of_any_threshold(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(size=(80, 3)), 2)
    positive = rng.uniform(size=(80, 3)) < scores             # informative but noisy
    got = decoding.calibrate_thresholds(scores, positive, "f1")
    for c in range(3):
        best = max(row[3] for row in brute_force(scores, positive, c))
        assert got.f1[c] == pytest.approx(best, abs=1e-12)
        predicted = scores[:, c] >= got.thresholds[c]
        assert f1_score(positive[:, c], predicted) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("target", [0.6, 0.8, 0.95])
def test_precision_calibration_takes_the_lowest_threshold_that_reaches_the_target(target):
    rng = np.random.default_rng(11)
    scores = np.round(rng.uniform(size=(120, 3)), 2)
    positive = rng.uniform(size=(120, 3)) < scores ** 2
    got = decoding.calibrate_thresholds(scores, positive, "precision", target_precision=target)
    for c in range(3):
        positive_scores = set(scores[positive[:, c], c])
        reaching = [row for row in brute_force(scores, positive, c)
                    if row[1] >= target and row[0] in positive_scores]
        assert got.thresholds[c] == reaching[0][0]
        assert got.precision[c] == pytest.approx(reaching[0][1])
        assert got.recall[c] == pytest.approx(max(row[2] for row in reaching))


def test_calibration_of_unreachable_precision_and_of_a_class_without_positives():
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.4]])
    positive = np.array([[0, 0], [1, 0], [0, 0]], bool)     # class 0: its positive is below a negative
    got = decoding.calibrate_thresholds(scores, positive, "precision", target_precision=0.9, default=0.3)
    assert got.thresholds[0] > 0.9 and not decoding.apply_thresholds(scores, got.thresholds)[:, 0].any()
    assert "never reached" in got.note[0]
    assert got.thresholds[1] == 0.3 and "no positives" in got.note[1]
    with pytest.raises(ValueError, match=r"method 'precision' needs a target precision in \(0, 1\] \(got None\)"):
        decoding.calibrate_thresholds(scores, positive, "precision")


def test_calibration_leaves_out_ignored_entries():
    scores = np.array([[0.9], [0.8], [0.3], [0.2]])
    positive = np.array([[1], [0], [1], [0]], bool)
    valid = np.array([[True], [False], [True], [True]])     # without row 1, 0.3 gives F1 = 1
    assert decoding.calibrate_thresholds(scores, positive, "f1", valid=valid).thresholds[0] == 0.3


@pytest.mark.parametrize("probs, mass, counts, expected", [
    ([[0.5, 0.3, 0.2]], 0.8, {}, [[0, 1]]),
    ([[0.5, 0.3, 0.2]], 0.81, {}, [[0, 1, 2]]),
    ([[0.5, 0.3, 0.2]], 0.5, {}, [[0]]),
    ([[0.5, 0.3, 0.2]], 0.4, {}, [[0]]),
    ([[0.1, 0.6, 0.3]], 0.85, {}, [[1, 2]]),
    ([[0.1, 0.6, 0.3], [0.05, 0.05, 0.9]], 0.85, {}, [[1, 2], [2]]),
    ([[0.25, 0.25, 0.25, 0.25]], 0.9, dict(max_count=2), [[0, 1]]),   # ties: lower index first
    ([[0.9, 0.06, 0.04]], 0.5, dict(min_count=2), [[0, 1]]),
    ([[0.4, 0.3, 0.2]], 1.0, {}, [[0, 1, 2]]),                         # never reaches: all
    ([[0.4, 0.3, 0.2]], 1.0, dict(max_count=1), [[0]]),
    ([[0.9, 0.1]], 0.5, dict(min_count=0), [[0]]),
])
def test_cumulative_mass_by_hand(probs, mass, counts, expected):
    assert decoding.label_sets(decoding.cumulative_mass_mask(probs, mass, **counts)) == expected


def test_cumulative_mass_tolerates_float32_rounding():
    probs = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)    # 0.7f + 0.2f falls short of 0.9 in float64
    assert float(probs[0, 0]) + float(probs[0, 1]) < 0.9
    assert decoding.label_sets(decoding.cumulative_mass_mask(probs, 0.9)) == [[0, 1]]


def test_cumulative_mass_rejects_bad_levels():
    with pytest.raises(ValueError, match=r"mass must be in \(0, 1\] \(got 1.5\)"):
        decoding.cumulative_mass_mask([[1.0]], 1.5)
    with pytest.raises(ValueError, match=r"need 0 <= min_count <= max_count \(got 3, 2\)"):
        decoding.cumulative_mass_mask([[0.5, 0.5]], 0.5, min_count=3, max_count=2)


def test_top_k_and_thresholds():
    scores = np.array([[0.2, 0.9, 0.9, 0.1], [0.6, 0.1, 0.3, 0.7]])
    assert decoding.label_sets(decoding.top_k_mask(scores, 2)) == [[1, 2], [0, 3]]
    assert decoding.label_sets(decoding.top_k_mask(scores, 1)) == [[1], [3]]
    assert decoding.label_sets(decoding.apply_thresholds(scores, [0.2, 0.95, 0.3, 0.7])) == [[0, 2], [0, 2, 3]]


def test_activations():
    x = np.array([[-800.0, 0.0, 3.0], [40.0, -2.0, 0.5]])
    np.testing.assert_allclose(decoding.activate(x, "sigmoid"), expit(x), rtol=1e-12)
    np.testing.assert_allclose(decoding.activate(x, "softmax"), scipy_softmax(x, axis=1), rtol=1e-12)
    out = decoding.activate(x, "none")
    out[0, 0] = 1
    assert x[0, 0] == -800.0
    with pytest.raises(ValueError, match="activation must be one of sigmoid, softmax, none"):
        decoding.activate(x, "relu")


def test_thresholds_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "t.json"
    decoding.save_thresholds(path, np.array([0.25, 0.5, 0.75]), ["a", "b", "c"], "f1")
    assert json.loads(path.read_text()) == {"thresholds": [0.25, 0.5, 0.75], "classes": ["a", "b", "c"],
                                            "method": "f1"}
    thresholds, classes = decoding.load_thresholds(str(path), 3)
    np.testing.assert_array_equal(thresholds, [0.25, 0.5, 0.75])
    assert classes == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"--thresholds file '.*t.json' has 3 thresholds but the scores has 4"):
        decoding.load_thresholds(str(path), 4, who="--thresholds")
    path.write_text("[0.5, 0.5]")
    with pytest.raises(ValueError, match=r"must hold a JSON object with \"thresholds\": a list of finite numbers"):
        decoding.load_thresholds(str(path), 2)
    path.write_text('{"thresholds": [0.5, 0.5], "classes": ["a"]}')
    with pytest.raises(ValueError, match=r"\"classes\" must be a list of 2 names"):
        decoding.load_thresholds(str(path), 2)
    path.write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        decoding.load_thresholds(str(path), 2)
    with pytest.raises(ValueError, match="'missing.json' does not exist"):
        decoding.load_thresholds("missing.json", 2)


def test_thresholds_are_written_whole_and_only_when_finite(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("earlier")
    with pytest.raises(ValueError, match="threshold 1 is nan: thresholds must be finite numbers"):
        decoding.save_thresholds(path, np.array([0.5, np.nan]))
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["t.json"]
    decoding.save_thresholds(path, np.array([0.5, 0.25]))
    assert json.loads(path.read_text()) == {"thresholds": [0.5, 0.25]}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
    with pytest.raises(ValueError, match=r"default threshold must be a finite number \(got nan\)"):
        decoding.calibrate_thresholds(np.zeros((2, 1)), np.zeros((2, 1), bool), default=float("nan"))

"""Class weights from label counts: hand-computed values, and files the losses read."""
import json

import numpy as np
import pytest

from caffe_layers import class_weights as cw
from caffe_layers.config import FocalConfig


def labels_with_counts(counts, n):
    """(n, C) multi-hot labels whose class c has counts[c] positives."""
    labels = np.zeros((n, len(counts)))
    for c, k in enumerate(counts):
        labels[:k, c] = 1
    return labels


def test_label_counts_leave_out_the_ignore_label():
    labels = np.array([[1, 0, -1], [1, -1, -1], [0, 1, 1]])
    positives, valid = cw.label_counts(labels, ignore_label=-1)
    np.testing.assert_array_equal(positives, [2, 1, 1])
    np.testing.assert_array_equal(valid, [3, 2, 1])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1; 3 are not, the first at index \(0, 2\): -1.0"):
        cw.label_counts(labels)
    with pytest.raises(ValueError, match=r"labels must be \(N, C\) multi-hot, got shape \(3,\)"):
        cw.label_counts(np.ones(3))


def test_inverse_frequency_by_hand():
    # 1/n = 1, 1/2, 1/4, 1/8 with mean 15/32: weights 32/15, 16/15, 8/15, 4/15
    positives, valid = cw.label_counts(labels_with_counts([1, 2, 4, 8], 16))
    weights = cw.class_weights(positives, valid, "inverse_frequency")
    np.testing.assert_allclose(weights, [32 / 15, 16 / 15, 8 / 15, 4 / 15], rtol=1e-12)
    assert weights.mean() == pytest.approx(1.0)


def test_effective_number_by_hand():
    # beta = 0.9: (1 - 0.9) / (1 - 0.9^1) = 1, (1 - 0.9) / (1 - 0.81) = 10/19; mean 29/38
    weights = cw.class_weights([1, 2], [10, 10], "effective_number", beta=0.9)
    np.testing.assert_allclose(weights, [38 / 29, 20 / 29], rtol=1e-12)
    np.testing.assert_allclose(cw.class_weights([1, 2, 50], [99] * 3, "effective_number", beta=0.0), [1, 1, 1])


def test_effective_number_tends_to_inverse_frequency_as_beta_tends_to_one():
    counts = [3, 30, 300]
    near_one = cw.class_weights(counts, [1000] * 3, "effective_number", beta=1 - 1e-9)
    np.testing.assert_allclose(near_one, cw.class_weights(counts, [1000] * 3), rtol=1e-5)


def test_alpha_balances_each_class_positives_against_its_negatives():
    positives, valid = cw.label_counts(labels_with_counts([1, 5, 9], 10))
    np.testing.assert_allclose(cw.class_weights(positives, valid, kind="alpha"), [0.9, 0.5, 0.1], rtol=1e-12)
    # effective number, beta 0.5: w(n) = 0.5 / (1 - 0.5^n); n_pos 1, n_neg 9: 1 vs 0.5/(1 - 1/512)
    w_neg = 0.5 / (1 - 0.5 ** 9)
    alpha = cw.class_weights([1], [10], "effective_number", beta=0.5, kind="alpha")
    assert alpha[0] == pytest.approx(1 / (1 + w_neg), rel=1e-12)


def test_a_class_without_positives_needs_a_minimum_count():
    with pytest.raises(ValueError, match=r"classes \[1\] have no positives, so their weight is infinite; "
                                         r".*min-count 1"):
        cw.class_weights([4, 0, 2], [10, 10, 10])
    weights = cw.class_weights([4, 0, 2], [10, 10, 10], min_count=1)
    np.testing.assert_allclose(weights / weights[1], [1 / 4, 1, 1 / 2])
    with pytest.raises(ValueError, match=r"classes \[0\] have no negatives"):
        cw.class_weights([10, 2], [10, 10], kind="alpha")


@pytest.mark.parametrize("method, beta, kind", [("inverse_frequency", 0.999, "class_weights"),
                                                ("effective_number", 0.99, "class_weights"),
                                                ("inverse_frequency", 0.999, "alpha")])
def test_the_written_file_is_what_a_loss_layer_reads(tmp_path, method, beta, kind):
    weights = cw.class_weights([3, 7, 20], [40, 40, 40], method, beta, kind)
    path = tmp_path / "w.json"
    cw.save_weights(path, weights)
    assert isinstance(json.loads(path.read_text()), list)
    config = FocalConfig.from_param_str(json.dumps({kind: str(path)}))
    np.testing.assert_allclose(getattr(config, kind), weights, rtol=1e-7)


def test_bad_options():
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\) \(got 1.0\)"):
        cw.class_weights([1], [2], "effective_number", beta=1.0)
    with pytest.raises(ValueError, match="method must be one of inverse_frequency, effective_number"):
        cw.class_weights([1], [2], "sqrt")


def test_weights_are_written_whole_and_only_when_finite(tmp_path):
    path = tmp_path / "w.json"
    path.write_text("earlier")
    with pytest.raises(ValueError, match="weight 0 is inf: weights must be finite numbers"):
        cw.save_weights(path, [np.inf, 1.0])
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["w.json"]
    cw.save_weights(path, [0.5, 1.5])
    assert json.loads(path.read_text()) == [0.5, 1.5] and [p.name for p in tmp_path.iterdir()] == ["w.json"]

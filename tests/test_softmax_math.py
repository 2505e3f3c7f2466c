"""caffe_layers.multilabel_softmax against float64 references computed one position at a time."""
import numpy as np
import pytest

from caffe_layers.multilabel_softmax import multilabel_softmax_loss, softmax
from references import central_differences, softmax_positions

OPTIONS = [
    dict(),
    dict(target_normalization="sum"),
    dict(target_normalization="none"),
    dict(label_smoothing=0.1),
    dict(loss="kl"),
    dict(loss="kl", label_smoothing=0.2, target_normalization="sum"),
    dict(class_weights=[1.0, 2.0, 0.5, 0.0, 3.0]),
    dict(class_weights=[1.0, 2.0, 0.5, 0.0, 3.0], target_normalization="sum"),
]


def _dense(rng, shape, real=False):
    t = (rng.uniform(size=shape) < 0.35).astype(np.float64)
    if real:
        t *= rng.uniform(0.1, 2.0, size=shape)
    t[0] = 0  # a sample with no positive anywhere
    return t


def _check(x, t, options, weights=None, axis=1):
    grad = np.empty_like(x)
    prob = np.empty_like(x)
    sums = multilabel_softmax_loss(x, t, axis=axis, weights=weights, grad_out=grad, prob_out=prob, **options)
    reference = softmax_positions(x, t, axis=axis, weights=weights, **options)
    np.testing.assert_allclose(sums.loss, reference.sum(), rtol=1e-12, atol=1e-12)
    numeric = central_differences(lambda v: softmax_positions(v, t, axis=axis, weights=weights, **options).sum(), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(prob, e / e.sum(axis=axis, keepdims=True), rtol=1e-12)
    return sums


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 2, 3)])
@pytest.mark.parametrize("real", [False, True])
def test_dense_targets_match_reference(rng, options, shape, real):
    x = rng.normal(scale=3.0, size=shape)
    _check(x, _dense(rng, shape, real), options)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 2, 3)])
def test_index_targets_match_reference(rng, options, shape):
    x = rng.normal(scale=3.0, size=shape)
    labels = rng.integers(0, 5, size=(shape[0],) + shape[2:]).astype(np.float64)
    _check(x, labels, options)
    _check(x, labels.reshape((shape[0], 1) + shape[2:]), options)


def test_index_targets_with_ignore_label(rng):
    x = rng.normal(size=(4, 5, 3))
    labels = rng.integers(0, 5, size=(4, 3)).astype(np.float64)
    labels[1, 2] = labels[3, 0] = 255
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, labels, ignore_label=255, grad_out=grad)
    np.testing.assert_allclose(sums.loss, softmax_positions(x, labels, ignore_label=255).sum(), rtol=1e-12)
    assert sums.valid == 10
    assert np.all(grad[1, :, 2] == 0) and np.all(grad[3, :, 0] == 0)


@pytest.mark.parametrize("weights_shape", [(4,), (4, 3)])
def test_weights_bottom(rng, weights_shape):
    x = rng.normal(size=(4, 5, 3))
    _check(x, _dense(rng, x.shape), {}, weights=rng.uniform(size=weights_shape))


def test_other_axis(rng):
    x = rng.normal(size=(3, 4, 5))
    _check(x, _dense(rng, x.shape), {}, axis=2)


def test_one_hot_dense_equals_index_labels_equals_softmax_cross_entropy_by_hand():
    # scores (0, log 2, log 5): softmax (1/8, 2/8, 5/8)
    x = np.array([[0.0, np.log(2.0), np.log(5.0)]])
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, np.array([[0.0, 1.0, 0.0]]), grad_out=grad)
    assert sums.loss == pytest.approx(np.log(4.0), rel=1e-14)
    np.testing.assert_allclose(grad, [[1 / 8, 2 / 8 - 1, 5 / 8]], rtol=1e-14)
    assert multilabel_softmax_loss(x, np.array([1.0])).loss == pytest.approx(np.log(4.0), rel=1e-14)


def test_real_valued_targets_gradient_by_hand():
    # targets (0, 2, 1), "none": q = t, sum(q) = 3, grad = 3 p - q (the seed's is wrong here)
    x = np.array([[0.0, np.log(2.0), np.log(5.0)]])
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, np.array([[0.0, 2.0, 1.0]]), target_normalization="none", grad_out=grad)
    assert sums.loss == pytest.approx(-2 * np.log(2 / 8) - np.log(5 / 8), rel=1e-14)
    np.testing.assert_allclose(grad, [[3 / 8, 6 / 8 - 2, 15 / 8 - 1]], rtol=1e-14)


def test_kl_of_a_perfect_prediction_is_zero():
    x = np.log(np.array([[0.5, 0.5, 1e-30], [0.25, 0.25, 0.5]]))
    t = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 2.0]])
    sums = multilabel_softmax_loss(x, t, target_normalization="sum", loss="kl")
    assert sums.loss == pytest.approx(0.0, abs=1e-12)


def test_rows_without_positive_add_nothing_and_are_not_valid():
    x = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]])
    t = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, t, grad_out=grad)
    assert sums.valid == 1
    assert np.all(grad[0] == 0)
    assert sums.loss == pytest.approx(-np.log(np.exp(3) / (np.exp(3) + np.exp(1) + 1)), rel=1e-14)


def test_extreme_logits_float32():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=np.float32)
    t = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32)
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, t, grad_out=grad)
    assert sums.loss == pytest.approx(2e4 + 2e4 + np.log(2.0), rel=1e-6)
    np.testing.assert_allclose(grad, [[1, -1, 0], [-1, 0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(softmax(x), [[1, 0, 0], [0, 0.5, 0.5]], atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 8000), (5000, 4)])
def test_blocked_computation_covers_big_blobs(rng, shape):
    x = rng.normal(size=shape)
    t = _dense(rng, shape)
    sums = multilabel_softmax_loss(x, t)
    np.testing.assert_allclose(sums.loss, softmax_positions(x, t).sum(), rtol=1e-10)


@pytest.mark.parametrize("options", [dict(), dict(target_normalization="sum", label_smoothing=0.1), dict(loss="kl")])
def test_sparse_multi_hot_targets_on_a_big_blob(rng, options):
    # about 1% non-zero targets: the layer's sparse path; several blocks; float32 like a blob
    x = rng.normal(scale=2.0, size=(3000, 40)).astype(np.float32)
    t = (rng.uniform(size=x.shape) < 0.01).astype(np.float32)
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, t, grad_out=grad, **options)
    reference = softmax_positions(x, t, **options)
    np.testing.assert_allclose(sums.loss, reference.sum(), rtol=1e-5)
    assert sums.valid == np.count_nonzero(t.sum(axis=1))
    # d/dx by hand, in float64: sum(q) p - q
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    count = np.count_nonzero(t64, axis=1)[:, None]
    q = t64 / np.where(count > 0, count, 1) if options.get("target_normalization", "count") == "count" \
        else t64 / np.maximum(t64.sum(axis=1, keepdims=True), 1e-300)
    eps = options.get("label_smoothing", 0.0)
    q = (1 - eps) * q + eps * q.sum(axis=1, keepdims=True) / x.shape[1]
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(grad, q.sum(axis=1, keepdims=True) * p - q, atol=1e-6)

"""caffe_layers.focal against float64 references written from the paper's formulas."""
import numpy as np
import pytest

from caffe_layers.focal import sigmoid, sigmoid_focal_loss
from references import central_differences, focal_elementwise

OPTIONS = [
    dict(gamma=0.0),
    dict(gamma=0.5),
    dict(gamma=1.0),
    dict(gamma=2.0),
    dict(gamma=3.5, alpha=0.25),
    dict(gamma=2.0, alpha=[0.1, 0.9, 0.5, 0.3]),
    dict(gamma=2.0, class_weights=[1.0, 0.0, 2.5, 0.5]),
]


def _inputs(rng, shape, soft=False):
    x = rng.normal(scale=3.0, size=shape)
    t = rng.uniform(size=shape) if soft else (rng.uniform(size=shape) < 0.3).astype(np.float64)
    return x, t


def _reference(x, t, gamma, alpha=None, class_weights=None, weights=None):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    alpha_b = None if alpha is None else np.reshape(alpha, shape) if np.ndim(alpha) else alpha
    w = np.ones_like(x)
    if class_weights is not None:
        w = w * np.reshape(class_weights, shape)
    if weights is not None:
        w = w * (weights.reshape((-1,) + (1,) * (x.ndim - 1)) if weights.ndim == 1 else weights)
    return focal_elementwise(x, t, gamma, alpha_b, w)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("shape", [(5, 4), (2, 4, 3, 2)])
@pytest.mark.parametrize("soft", [False, True])
def test_loss_and_gradient_match_float64_reference(rng, options, shape, soft):
    x, t = _inputs(rng, shape, soft)
    grad = np.empty_like(x)
    prob = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, grad_out=grad, prob_out=prob, **options)
    expected = _reference(x, t, **options)
    np.testing.assert_allclose(sums.loss, expected.sum(), rtol=1e-12)
    numeric = central_differences(lambda v: _reference(v, t, **options).sum(), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-x)), rtol=1e-12)
    assert sums.valid == x.size
    np.testing.assert_allclose(sums.positives, t.sum())


@pytest.mark.parametrize("weights_shape", ["sample", "element"])
def test_weights_bottom(rng, weights_shape):
    x, t = _inputs(rng, (3, 4, 2))
    weights = rng.uniform(size=(3,) if weights_shape == "sample" else x.shape)
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=2.0, weights=weights, grad_out=grad)
    np.testing.assert_allclose(sums.loss, _reference(x, t, 2.0, weights=weights).sum(), rtol=1e-12)
    numeric = central_differences(lambda v: _reference(v, t, 2.0, weights=weights).sum(), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


def test_ignore_label_drops_entries(rng):
    x, t = _inputs(rng, (4, 5))
    t[0, 1] = t[2, 3] = t[3, 0] = -1
    kept = t != -1
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=2.0, alpha=0.25, ignore_label=-1, grad_out=grad)
    expected = _reference(x, np.where(kept, t, 0), 2.0, alpha=0.25) * kept
    np.testing.assert_allclose(sums.loss, expected.sum(), rtol=1e-12)
    assert np.all(grad[~kept] == 0)
    assert sums.valid == 17
    assert sums.positives == t[kept].sum()


def test_gamma_zero_is_binary_cross_entropy_by_hand():
    # x = 0: p = 1/2, ce = log 2 for either target; x = log 3: p = 3/4
    x = np.array([[0.0, np.log(3.0)]])
    t = np.array([[1.0, 0.0]])
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=0.0, grad_out=grad)
    assert sums.loss == pytest.approx(np.log(2.0) + np.log(4.0), rel=1e-14)
    np.testing.assert_allclose(grad, [[-0.5, 0.75]], rtol=1e-14)


def test_gamma_two_by_hand():
    # x = log 3, t = 1: p = 3/4, 1 - p_t = 1/4, ce = log(4/3)
    x = np.array([[np.log(3.0)]])
    t = np.array([[1.0]])
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=2.0, alpha=0.25, grad_out=grad)
    assert sums.loss == pytest.approx(0.25 * (1 / 16) * np.log(4 / 3), rel=1e-14)
    # 0.25 [ q^2 (p - 1) + 2 q p (1 - p)(-1) ce ] with q = 1/4, p = 3/4
    expected = 0.25 * ((1 / 16) * (-0.25) - 2 * 0.25 * 0.75 * 0.25 * np.log(4 / 3))
    assert grad[0, 0] == pytest.approx(expected, rel=1e-14)


def test_focal_is_at_most_cross_entropy_and_alpha_zeroes_one_side(rng):
    x, t = _inputs(rng, (50, 6))
    focal = sigmoid_focal_loss(x, t, gamma=2.0).loss
    cross_entropy = sigmoid_focal_loss(x, t, gamma=0.0).loss
    assert 0 < focal < cross_entropy
    only_negatives = sigmoid_focal_loss(x, t, gamma=2.0, alpha=0.0).loss
    np.testing.assert_allclose(only_negatives, _reference(x, t, 2.0).sum(where=t == 0), rtol=1e-12)
    only_positives = sigmoid_focal_loss(x, t, gamma=2.0, alpha=1.0).loss
    np.testing.assert_allclose(only_positives, _reference(x, t, 2.0).sum(where=t == 1), rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_extreme_logits_float32(gamma):
    x = np.array([[1e4, -1e4, 1e4, -1e4, 100.0, -100.0, 0.0]], dtype=np.float32)
    t = np.array([[1, 1, 0, 0, 1, 0, 1]], dtype=np.float32)
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=gamma, grad_out=grad)
    assert np.isfinite(sums.loss) and np.all(np.isfinite(grad))
    # wrong by 1e4 with confidence 1: ce = 1e4 and 1 - p_t = 1, twice; the rest ~0 except x = 0
    assert sums.loss == pytest.approx(2e4 + np.log(2.0) * 0.5 ** gamma, rel=1e-6)
    np.testing.assert_allclose(grad[0, :4], [0, -1, 1, 0], atol=1e-6)


def test_fractional_gamma_has_finite_gradients_at_saturation():
    x = np.array([[60.0, -60.0, 1e4, -1e4, 0.0]], dtype=np.float32)
    t = np.array([[1, 0, 1, 0, 0.5]], dtype=np.float32)
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=0.5, grad_out=grad)
    assert np.isfinite(sums.loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0, :4], 0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 7, 5000), (3000, 9)])
def test_blocked_computation_covers_big_blobs(rng, shape):
    x, t = _inputs(rng, shape)
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=2.0, alpha=0.25, grad_out=grad)
    np.testing.assert_allclose(sums.loss, _reference(x, t, 2.0, 0.25).sum(), rtol=1e-10)
    # d/dx of the element loss, by hand: alpha_t [q^2 (p - t) + 2 q p (1 - p)(1 - 2t) ce]
    p = 1 / (1 + np.exp(-x))
    q = p * (1 - t) + (1 - p) * t
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    np.testing.assert_allclose(grad, alpha_t * (q ** 2 * (p - t) + 2 * q * p * (1 - p) * (1 - 2 * t) * ce),
                               rtol=1e-9, atol=1e-12)


def test_sigmoid_is_stable():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=np.float32)
    with np.errstate(over="raise"):
        np.testing.assert_allclose(sigmoid(x), [0, np.exp(-50.0), 0.5, 1, 1], rtol=1e-6)

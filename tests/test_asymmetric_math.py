"""caffe_layers.asymmetric against float64 references, values by hand and the released formula.

Expected values come from ``caffe_layers.reference.asymmetric_elements`` (the formula as the
paper writes it, in float64), from numbers worked out by hand, from the paper's released
implementation written out below in NumPy, and from central differences; never from the
kernel itself.
"""
import itertools

import numpy as np
import pytest

from caffe_layers import asymmetric
from caffe_layers.asymmetric import asymmetric_loss
from caffe_layers.focal import sigmoid_focal_loss
from references import (asymmetric_elements, central_differences, elementwise_central_differences,
                        sigmoid_focal_elements)

GAMMAS = [0.0, 1.0, 2.0, 0.5, 4.0]
CLIPS = [0.0, 0.05, 0.3]
SPARSE_TARGETS = asymmetric.SPARSE_TARGETS  # as shipped, before any test changes it
LOSS_OPTIONS = ("gamma_pos", "gamma_neg", "clip", "class_weights", "weights", "ignore_label")


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def _inputs(rng, shape, kind, clip=0.0, dtype=np.float64):
    """Scores ~ N(0, 3), kept at least 0.02 away in logit from the margin (where the loss has a
    kink or a steep third derivative, so central differences are off), and targets of a kind:
    "binary" (about 30% ones: the dense walk), "multi_hot" (one 1 per sample of 64 elements or
    more, plus 0.5%: the sparse walk) or "soft" (uniform in [0, 1])."""
    x = rng.normal(scale=3.0, size=shape)
    if clip > 0:
        margin = np.log(clip / (1 - clip))
        x = np.where(np.abs(x - margin) < 0.02, x + 0.05, x)
    if kind == "binary":
        t = (rng.uniform(size=shape) < 0.3).astype(np.float64)
    elif kind == "multi_hot":
        t = (rng.uniform(size=shape) < 0.005).astype(np.float64)
        per_sample = t[0].size
        if per_sample >= 64:  # a label per sample, where that keeps the targets sparse
            t.reshape(shape[0], -1)[np.arange(shape[0]), rng.integers(0, per_sample, size=shape[0])] = 1
        t.reshape(-1)[0] = 1
        assert np.count_nonzero(t) <= SPARSE_TARGETS * t.size  # so that the sparse walk runs
    else:
        t = rng.uniform(size=shape)
    return x.astype(dtype), t.astype(dtype)


def _reference(x, t, detach_focal_weight=False, **options):
    """(element losses, d(sum)/dx by central differences) from the float64 reference; with
    detach_focal_weight the focusing factors are held at x while differentiating."""
    options = {k: v for k, v in options.items() if k in LOSS_OPTIONS}
    x64 = np.asarray(x, dtype=np.float64)
    focusing = x64 if detach_focal_weight else None
    losses = asymmetric_elements(x64, t, **options)
    grad = elementwise_central_differences(
        lambda v: asymmetric_elements(v, t, focusing_scores=focusing, **options), x64)
    return losses, grad


def _run(x, t, **options):
    grad = np.empty_like(x)
    prob = np.empty_like(x)
    sums = asymmetric_loss(x, t, grad_out=grad, prob_out=prob, **options)
    return sums, grad, prob


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", list(itertools.product(GAMMAS, GAMMAS, CLIPS)))
@pytest.mark.parametrize("detach", [False, True])
def test_every_gamma_and_clip_against_the_reference(rng, gamma_pos, gamma_neg, clip, detach):
    options = dict(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, detach_focal_weight=detach)
    for kind in ("binary", "multi_hot", "soft"):
        x, t = _inputs(rng, (6, 80), kind, clip)
        sums, grad, prob = _run(x, t, **options)
        losses, numeric = _reference(x, t, **options)
        np.testing.assert_allclose(sums.loss, losses.sum(), rtol=1e-12)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(prob, _sigmoid(x), rtol=1e-14)
        assert sums.valid == x.size
        np.testing.assert_allclose(sums.positives, t.sum(), rtol=1e-14)


def test_central_differences_of_the_summed_loss_agree(rng):
    # the element-wise differences used above against the plain one-element-at-a-time ones
    options = dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    x, t = _inputs(rng, (2, 3, 2, 2), "soft", 0.05)
    grad = np.empty_like(x)
    asymmetric_loss(x, t, grad_out=grad, **options)
    numeric = central_differences(lambda v: asymmetric_elements(v, t, **options).sum(), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


OPTION_SETS = [
    dict(),
    dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05, detach_focal_weight=True),
    dict(gamma_pos=0.5, gamma_neg=2.0, clip=0.0),
    dict(gamma_pos=2.0, gamma_neg=0.5, clip=0.3),
]


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("shape", [(6, 80), (3, 4, 5, 4)])
@pytest.mark.parametrize("kind", ["binary", "multi_hot", "soft"])
@pytest.mark.parametrize("weights", [None, "sample", "element"])
@pytest.mark.parametrize("ignore_label", [None, -1.0, 255.0])
def test_weights_class_weights_and_ignore_label(rng, options, shape, kind, weights, ignore_label):
    x, t = _inputs(rng, shape, kind, options.get("clip", 0.05))
    class_weights = rng.uniform(0.0, 3.0, size=shape[1])
    w = {None: None, "sample": rng.uniform(size=shape[0]), "element": rng.uniform(size=shape)}[weights]
    if ignore_label is not None:
        t[rng.uniform(size=shape) < 0.2] = ignore_label
    full = dict(options, class_weights=class_weights, weights=w, ignore_label=ignore_label)
    sums, grad, _ = _run(x, t, **full)
    losses, numeric = _reference(x, t, **full)
    np.testing.assert_allclose(sums.loss, losses.sum(), rtol=1e-12)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    kept = np.ones(shape, bool) if ignore_label is None else t != ignore_label
    assert np.all(grad[~kept] == 0)
    assert sums.valid == np.count_nonzero(kept)
    np.testing.assert_allclose(sums.positives, t[kept].sum(), rtol=1e-14)


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("kind", ["binary", "multi_hot", "soft"])
def test_float32_inputs_stay_close_to_the_float64_reference(rng, options, kind):
    x, t = _inputs(rng, (50, 300), kind, options.get("clip", 0.05), dtype=np.float32)
    sums, grad, prob = _run(x, t, **options)
    assert grad.dtype == np.float32 and prob.dtype == np.float32
    losses, numeric = _reference(x, t, **options)
    np.testing.assert_allclose(sums.loss, losses.sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prob, _sigmoid(x), rtol=1e-6)


@pytest.mark.parametrize("always_sparse", [False, True])
@pytest.mark.parametrize("kind", ["binary", "multi_hot", "soft"])
def test_both_walks_on_any_targets(rng, monkeypatch, always_sparse, kind):
    # every block walked as negatives with the non-zeros redone (1.0), or never (-1.0)
    monkeypatch.setattr(asymmetric, "SPARSE_TARGETS", 1.0 if always_sparse else -1.0)
    options = dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05, class_weights=rng.uniform(size=7),
                   weights=rng.uniform(size=(30, 7, 10)), ignore_label=-1.0)
    x, t = _inputs(rng, (30, 7, 10), kind, 0.05)
    t[rng.uniform(size=t.shape) < 0.1] = -1
    sums, grad, _ = _run(x, t, **options)
    losses, numeric = _reference(x, t, **options)
    np.testing.assert_allclose(sums.loss, losses.sum(), rtol=1e-12)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    kept = t != -1
    assert sums.valid == np.count_nonzero(kept)
    np.testing.assert_allclose(sums.positives, t[kept].sum(), rtol=1e-14)


# Values by hand. x = log 3: p = 3/4, 1 - p = 1/4. With m = 1/4: p_m = 1/2, A = 1 - p_m = 1/2.
LOG3 = np.log(3.0)
HAND = [
    # (x, t, options, loss, gradient)
    # negative: -(1/2)^2 log(1/2); p (1 - p) [p_m^2 / A - 2 p_m log A] = 3/16 (1/2 + log 2)
    (LOG3, 0.0, dict(gamma_neg=2.0, clip=0.25), np.log(2) / 4, 3 / 16 * (0.5 + np.log(2))),
    # detached: p (1 - p) p_m^2 / A = 3/32
    (LOG3, 0.0, dict(gamma_neg=2.0, clip=0.25, detach_focal_weight=True), np.log(2) / 4, 3 / 32),
    # positive: (1/4)^2 log(4/3); -(1 - p)^2 [(1 - p) + 2 p (-log p)]
    (LOG3, 1.0, dict(gamma_pos=2.0, clip=0.25), np.log(4 / 3) / 16, -(0.25 + 1.5 * np.log(4 / 3)) / 16),
    (LOG3, 1.0, dict(gamma_pos=2.0, clip=0.25, detach_focal_weight=True), np.log(4 / 3) / 16, -1 / 64),
    # gamma_neg 0 with a margin: -log(1/2), gradient p (1 - p) / A = 3/8
    (LOG3, 0.0, dict(gamma_neg=0.0, clip=0.25), np.log(2), 3 / 8),
    # below the margin (p = 1/10 < 1/4): nothing, whatever gamma_neg
    (-np.log(9.0), 0.0, dict(gamma_neg=0.0, clip=0.25), 0.0, 0.0),
    (-np.log(9.0), 0.0, dict(gamma_neg=0.5, clip=0.25), 0.0, 0.0),
    (-np.log(9.0), 0.0, dict(gamma_neg=1.0, clip=0.25), 0.0, 0.0),
    # no margin, gamma_neg 1: -p log(1 - p) = (3/4) log 4; -p q log q + p^2 = (3/4)(3/4 + (1/4) log 4)
    (LOG3, 0.0, dict(gamma_neg=1.0, clip=0.0), 0.75 * np.log(4), 0.75 * (0.75 + 0.25 * np.log(4))),
    # soft target 1/2: half of each side (gamma_pos 1: -(1/4)(1/4 + (3/4) log(4/3)))
    (LOG3, 0.5, dict(gamma_pos=1.0, gamma_neg=2.0, clip=0.25), np.log(8 / 3) / 8,
     0.5 * -(0.25 * (0.25 + 0.75 * np.log(4 / 3))) + 0.5 * 3 / 16 * (0.5 + np.log(2))),
]


@pytest.mark.parametrize("x,t,options,loss,gradient", HAND)
def test_values_by_hand(x, t, options, loss, gradient):
    scores = np.array([[x]])
    grad = np.empty_like(scores)
    sums = asymmetric_loss(scores, np.array([[t]]), grad_out=grad, **options)
    assert sums.loss == pytest.approx(loss, rel=1e-13, abs=1e-300)
    assert grad[0, 0] == pytest.approx(gradient, rel=1e-13, abs=1e-300)
    # a class weight 2 and a sample weight 3 multiply both by 6
    sums = asymmetric_loss(scores, np.array([[t]]), class_weights=[2.0], weights=np.array([3.0]), grad_out=grad,
                           **options)
    assert sums.loss == pytest.approx(6 * loss, rel=1e-13, abs=1e-300)
    assert grad[0, 0] == pytest.approx(6 * gradient, rel=1e-13, abs=1e-300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["binary", "soft"])
def test_no_focusing_and_no_margin_is_sigmoid_cross_entropy(rng, dtype, kind):
    x, t = _inputs(rng, (20, 30), kind, dtype=dtype)
    sums, grad, _ = _run(x, t, gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    # log(1 + exp(x)) - t x = -(t log p + (1 - t) log(1 - p))
    cross_entropy = np.logaddexp(0.0, x64) - t64 * x64
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(sums.loss, cross_entropy.sum(), rtol=tol)
    np.testing.assert_allclose(grad, _sigmoid(x64) - t64, rtol=tol, atol=tol)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.0, 4.0])
def test_equal_gammas_and_no_margin_is_the_focal_loss_for_binary_targets(rng, gamma):
    x, t = _inputs(rng, (20, 30), "binary")
    sums, grad, _ = _run(x, t, gamma_pos=gamma, gamma_neg=gamma, clip=0.0)
    np.testing.assert_allclose(sums.loss, sigmoid_focal_elements(x, t, gamma=gamma).sum(), rtol=1e-12)
    focal_grad = np.empty_like(x)
    focal = sigmoid_focal_loss(x, t, gamma=gamma, grad_out=focal_grad)
    np.testing.assert_allclose(sums.loss, focal.loss, rtol=1e-12)
    np.testing.assert_allclose(grad, focal_grad, rtol=1e-10, atol=1e-14)


def test_soft_targets_are_linear_in_t_unlike_the_focal_loss(rng):
    options = dict(gamma_pos=2.0, gamma_neg=2.0, clip=0.0)
    x = rng.normal(scale=2.0, size=(1, 50))
    t = rng.uniform(size=x.shape)
    soft = asymmetric_loss(x, t, **options).loss
    ones = asymmetric_elements(x, np.ones_like(x), **options)
    zeros = asymmetric_elements(x, np.zeros_like(x), **options)
    np.testing.assert_allclose(soft, (t * ones + (1 - t) * zeros).sum(), rtol=1e-12)
    assert abs(soft - sigmoid_focal_elements(x, t, gamma=2.0).sum()) > 1e-3 * soft


def _released(x, y, gamma_pos, gamma_neg, clip, eps=1e-8, weight_at=None):
    """The paper's released AsymmetricLoss (Alibaba-MIIL/ASL, src/loss_functions/losses.py), as
    NumPy, per element. weight_at: scores at which the focusing weight is evaluated (their
    disable_torch_grad_focal_loss computes it without gradient)."""
    def probabilities(v):
        xs_pos = 1 / (1 + np.exp(-v))
        xs_neg = 1 - xs_pos
        if clip is not None and clip > 0:
            xs_neg = np.minimum(xs_neg + clip, 1)
        return xs_pos, xs_neg
    xs_pos, xs_neg = probabilities(x)
    los_pos = y * np.log(np.maximum(xs_pos, eps))
    los_neg = (1 - y) * np.log(np.maximum(xs_neg, eps))
    loss = los_pos + los_neg
    w_pos, w_neg = probabilities(x if weight_at is None else weight_at)
    pt = w_pos * y + w_neg * (1 - y)
    gamma = gamma_pos * y + gamma_neg * (1 - y)
    return -(loss * (1 - pt) ** gamma)


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (0.0, 2.0, 0.3),
                                                       (2.0, 2.0, 0.0), (0.5, 1.0, 0.05)])
@pytest.mark.parametrize("detach", [False, True])
def test_equals_the_released_implementation_at_moderate_scores(rng, gamma_pos, gamma_neg, clip, detach):
    options = dict(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, detach_focal_weight=detach)
    x, t = _inputs(rng, (16, 80), "binary", clip)
    x = np.clip(x * 2, -14.9, 14.9)  # up to |x| < 15, where their eps clamp of p and 1 - p + m is inactive
    sums = asymmetric_loss(x, t, **options)
    np.testing.assert_allclose(sums.loss, _released(x, t, gamma_pos, gamma_neg, clip).sum(), rtol=1e-12)
    # the gradient at |x| < 6: their 1 - p loses digits to cancellation beyond, which central
    # differences would magnify
    x = np.clip(x, -6.0, 6.0)
    sums, grad, _ = _run(x, t, **options)
    np.testing.assert_allclose(sums.loss, _released(x, t, gamma_pos, gamma_neg, clip).sum(), rtol=1e-12)
    numeric = elementwise_central_differences(
        lambda v: _released(v, t, gamma_pos, gamma_neg, clip, weight_at=x if detach else None), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (0.5, 1.5, 0.05), (1.5, 0.5, 0.0),
                                                       (0.0, 0.0, 0.0), (2.0, 4.0, 0.3)])
@pytest.mark.parametrize("detach", [False, True])
def test_finite_and_right_at_extreme_scores(dtype, gamma_pos, gamma_neg, clip, detach):
    x = np.array([[1e4, -1e4, 1e4, -1e4]], dtype=dtype)
    t = np.array([[1, 1, 0, 0]], dtype=dtype)
    grad = np.empty_like(x)
    sums = asymmetric_loss(x, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, detach_focal_weight=detach,
                           grad_out=grad)
    assert np.isfinite(sums.loss) and np.all(np.isfinite(grad))
    # by hand: x = 1e4, t = 1: 0. x = -1e4, t = 1: -log p = 1e4 (times (1 - p)^gamma_pos = 1),
    # gradient -(1 - p) = -1. x = 1e4, t = 0: p = 1; with a margin A = m, loss -(1 - m)^gamma_neg log m
    # and gradient p (1 - p) (...) = 0; without, -log(1 - p) = 1e4 and gradient p = 1.
    # x = -1e4, t = 0: p = 0, below any margin: 0.
    wrong_negative = -(1 - clip) ** gamma_neg * np.log(clip) if clip > 0 else 1e4
    assert sums.loss == pytest.approx(1e4 + wrong_negative, rel=1e-6)
    np.testing.assert_allclose(grad[0], [0, -1, 0 if clip > 0 else 1, 0], atol=1e-6)


@pytest.mark.parametrize("gamma_pos,gamma_neg", [(0.5, 0.5), (0.25, 1.5), (1.5, 0.25)])
def test_fractional_gammas_are_finite_at_saturation_and_at_the_margin(gamma_pos, gamma_neg):
    clip = np.float32(0.05)
    at_margin = np.log(clip / (1 - clip))
    x = np.array([[60.0, -60.0, 1e4, -1e4, at_margin, np.nextafter(at_margin, np.float32(1))]], dtype=np.float32)
    t = np.array([[1, 0, 1, 0, 0, 0]], dtype=np.float32)
    for detach in (False, True):
        grad = np.empty_like(x)
        sums = asymmetric_loss(x, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=0.05,
                               detach_focal_weight=detach, grad_out=grad)
        assert np.isfinite(sums.loss) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(grad[0, :4], 0, atol=1e-12)
        assert np.all(np.abs(grad[0, 4:]) < 1e-3)  # at the margin the gradient tends to 0


@pytest.mark.parametrize("gamma_neg", GAMMAS)
@pytest.mark.parametrize("detach", [False, True])
def test_below_the_margin_no_loss_and_no_gradient(rng, gamma_neg, detach):
    p = rng.uniform(1e-4, 0.299, size=(40, 50))  # every negative below a margin of 0.3
    x = np.log(p / (1 - p))
    t = np.zeros_like(x)
    grad = np.empty_like(x)
    sums = asymmetric_loss(x, t, gamma_pos=2.0, gamma_neg=gamma_neg, clip=0.3, detach_focal_weight=detach,
                           grad_out=grad)
    assert sums.loss == 0.0
    assert np.all(grad == 0.0)


@pytest.mark.parametrize("shape,block", [
    ((4, 5000), "rows longer than a block, per-element weights"),
    ((64, 40000), "rows longer than a block, many blocks, per-element weights"),
    ((1, 3, 200, 200), "one big sample: pieces of rows, a partial last piece"),
    ((1, 3, 70, 70), "one sample, rows of 4900 in blocks of 4096"),
    ((3, 7, 5000), "whole rows, two classes per block, a partial last block"),
    ((3000, 9), "many small samples, a partial last group"),
])
@pytest.mark.parametrize("kind", ["multi_hot", "soft"])
def test_big_blobs_every_blocked_walk(rng, shape, block, kind):
    options = dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    x, t = _inputs(rng, shape, kind, 0.05)
    weights = rng.uniform(size=shape)  # per element: the shape whose class slice must follow the block
    class_weights = rng.uniform(0.5, 2.0, size=shape[1])
    sums, grad, prob = _run(x, t, class_weights=class_weights, weights=weights, **options)
    losses, numeric = _reference(x, t, class_weights=class_weights, weights=weights, **options)
    np.testing.assert_allclose(sums.loss, losses.sum(), rtol=1e-11)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(prob, _sigmoid(x), rtol=1e-14)
    np.testing.assert_allclose(sums.positives, t.sum(), rtol=1e-12)
    assert sums.valid == x.size


def test_float32_blob_with_sample_weights_and_ignore_label(rng):
    shape = (2, 720, 16, 16)  # the detection-style benchmark's layout, smaller
    x, t = _inputs(rng, shape, "multi_hot", 0.05, dtype=np.float32)
    t[:, :, :2] = 255
    weights = rng.uniform(size=2).astype(np.float32)
    sums, grad, _ = _run(x, t, weights=weights, ignore_label=255)
    losses, numeric = _reference(x, t, weights=weights, ignore_label=255)
    np.testing.assert_allclose(sums.loss, losses.sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)
    assert sums.valid == x.size - 2 * 720 * 2 * 16


@pytest.mark.parametrize("kind", ["binary", "multi_hot"])
def test_fortran_ordered_arrays(rng, kind):
    # (N, C) blobs in column-major order: the blocks are views, the non-zeros are found by index
    x, t = _inputs(rng, (50, 80), kind, 0.05)
    x, t = np.asfortranarray(x), np.asfortranarray(t)
    w = np.asfortranarray(rng.uniform(size=x.shape))
    grad = np.asfortranarray(np.full_like(x, np.nan))
    prob = np.asfortranarray(np.full_like(x, np.nan))
    sums = asymmetric_loss(x, t, gamma_pos=1.0, weights=w, grad_out=grad, prob_out=prob)
    losses, numeric = _reference(x, t, gamma_pos=1.0, weights=w)
    np.testing.assert_allclose(sums.loss, losses.sum(), rtol=1e-12)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(prob, _sigmoid(x), rtol=1e-14)


def test_inputs_are_not_modified_and_outputs_are_optional(rng):
    x, t = _inputs(rng, (8, 80), "multi_hot", 0.05, dtype=np.float32)
    t[0, :3] = -1
    w = rng.uniform(size=x.shape).astype(np.float32)
    before = [a.copy() for a in (x, t, w)]
    options = dict(gamma_pos=1.0, class_weights=np.linspace(0.5, 2, 80), weights=w, ignore_label=-1)
    with_grad = asymmetric_loss(x, t, grad_out=np.empty_like(x), **options)
    without = asymmetric_loss(x, t, **options)
    for a, b in zip((x, t, w), before):
        np.testing.assert_array_equal(a, b)
    assert with_grad == without


@pytest.mark.parametrize("x,t,dtype", [(18.0, 1.0, np.float32), (-20.0, 0.0, np.float32), (-40.0, 0.0, np.float64),
                                       (40.0, 1.0, np.float64)])
@pytest.mark.parametrize("count", [1, 40])
def test_tiny_losses_keep_their_digits(x, t, dtype, count):
    # -log p (t = 1) or -log(1 - p) (t = 0, no margin) = log1p(exp(-|x|)), where 1 + exp(-|x|)
    # rounds to 1; one element (the dense walk) or 40 of them (t = 0: the sparse walk)
    scores = np.full((1, count), x, dtype=dtype)
    targets = np.full((1, count), t, dtype=dtype)
    sums = asymmetric_loss(scores, targets, gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
    assert sums.loss == pytest.approx(count * np.log1p(np.exp(-abs(x))), rel=1e-6, abs=0)


# --- the reference itself, against the hand values and the released formula --------------

@pytest.mark.parametrize("x,t,options,loss,gradient", HAND)
def test_the_reference_gives_the_values_by_hand(x, t, options, loss, gradient):
    options = {k: v for k, v in options.items() if k in LOSS_OPTIONS}
    assert asymmetric_elements(np.array([[x]]), np.array([[t]]), **options)[0, 0] == pytest.approx(
        loss, rel=1e-13, abs=1e-300)


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (2.0, 2.0, 0.0),
                                                       (0.5, 1.0, 0.3)])
def test_the_reference_is_the_released_formula_for_binary_targets(rng, gamma_pos, gamma_neg, clip):
    x, t = _inputs(rng, (16, 80), "binary", clip)
    x = np.clip(x * 2, -14.9, 14.9)
    ours = asymmetric_elements(x, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    np.testing.assert_allclose(ours, _released(x, t, gamma_pos, gamma_neg, clip), rtol=1e-9, atol=1e-15)
    # and with detached focusing the weights are evaluated where told
    shifted = x + 0.3
    ours = asymmetric_elements(x, t, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, focusing_scores=shifted)
    np.testing.assert_allclose(ours, _released(x, t, gamma_pos, gamma_neg, clip, weight_at=shifted), rtol=1e-9,
                               atol=1e-15)

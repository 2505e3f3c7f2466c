"""Edges of the NumPy kernels that realistic bugs hide in: rounding corrections, the last
partial block of each blocked walk, the sparse-target paths with class weights, and products
of weights. Every expected value is computed here independently (formulas by hand in float64,
or the float64 references of caffe_layers.reference), never by the kernel under test."""
import numpy as np
import pytest

from caffe_layers import blocks
from caffe_layers.asymmetric import asymmetric_loss
from caffe_layers.blocks import as_ncs, block_slices, flat_blocks
from caffe_layers.focal import sigmoid_focal_loss
from caffe_layers.multilabel_softmax import multilabel_softmax_loss
from references import asymmetric_elements, elementwise_central_differences, sigmoid_focal_elements, softmax_positions


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def _log_softmax(x, axis=1):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


# --- the log1p rounding correction: log(1 + e) where 1 + e rounds to 1 ---------------------

@pytest.mark.parametrize("x,t,dtype", [(-20.0, 0.0, np.float32), (-40.0, 0.0, np.float64), (18.0, 1.0, np.float32),
                                       (-20.0, 0.0, np.float64), (40.0, 1.0, np.float64)])
def test_focal_cross_entropy_keeps_the_digits_of_tiny_losses(x, t, dtype):
    # gamma 0: ce = log(1 + exp(-|x|)) for a confident right answer; float32 x = -20: 2.06e-9
    scores = np.array([[x]], dtype=dtype)
    grad = np.empty_like(scores)
    sums = sigmoid_focal_loss(scores, np.array([[t]], dtype=dtype), gamma=0.0, grad_out=grad)
    expected = np.log1p(np.exp(-abs(x)))
    assert sums.loss == pytest.approx(expected, rel=1e-6, abs=0)
    # the gradient p - t is exp(-|x|) / (1 + exp(-|x|)) in size, with the sign of (p - t); for
    # t = 1, p itself is within 1.5e-8 of 1 and a float32 p rounds to 1
    expected_grad = np.sign(0.5 - t) * np.exp(-abs(x)) / (1 + np.exp(-abs(x)))
    # (an absolute error below the dtype's epsilon where gamma 0's p - t rounds to 0)
    assert grad[0, 0] == pytest.approx(expected_grad, rel=1e-6, abs=0 if t == 0 else float(np.finfo(dtype).eps))


def test_focal_tiny_losses_in_a_whole_blob():
    # many elements of each kind, so the correction is tested in full blocks too
    x = np.tile(np.array([-20.0, 18.0], dtype=np.float32), (300, 50))
    t = np.tile(np.array([0.0, 1.0], dtype=np.float32), (300, 50))
    sums = sigmoid_focal_loss(x, t, gamma=0.0)
    expected = 15000 * (np.log1p(np.exp(-20.0)) + np.log1p(np.exp(-18.0)))
    assert sums.loss == pytest.approx(expected, rel=1e-5, abs=0)


# --- the last partial block of each walk ------------------------------------------------

def test_focal_last_partial_block_of_a_long_row(rng):
    # (1, 3, 70, 70): rows of 4900 elements in blocks of 4096, so each row ends in a block of 804
    x = rng.normal(scale=3.0, size=(1, 3, 70, 70))
    t = (rng.uniform(size=x.shape) < 0.3).astype(np.float64)
    grad = np.full_like(x, np.nan)  # a skipped block would leave NaN
    sums = sigmoid_focal_loss(x, t, gamma=2.0, grad_out=grad)
    # the formula, by hand: q = 1 - p_t, loss = q^2 ce, d/dx = q^2 (p - t) + 2 q p (1 - p) (1 - 2t) ce
    p = _sigmoid(x)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    q = p * (1 - t) + (1 - p) * t
    np.testing.assert_allclose(sums.loss, (q ** 2 * ce).sum(), rtol=1e-10)
    np.testing.assert_allclose(grad, q ** 2 * (p - t) + 2 * q * p * (1 - p) * (1 - 2 * t) * ce, rtol=1e-9, atol=1e-12)
    assert sums.valid == x.size


def test_softmax_last_partial_block_of_a_big_sample(rng):
    # (1, 5, 10001): one sample cut along S into blocks of 5000, the last one of 1 position
    x = rng.normal(scale=2.0, size=(1, 5, 10001))
    labels = rng.integers(0, 5, size=(1, 10001))
    grad = np.full_like(x, np.nan)
    sums = multilabel_softmax_loss(x, labels.astype(np.float64), grad_out=grad)
    log_p = _log_softmax(x)
    onehot = np.zeros_like(x)
    np.put_along_axis(onehot, labels[:, None, :], 1.0, axis=1)
    np.testing.assert_allclose(sums.loss, -(onehot * log_p).sum(), rtol=1e-11)
    np.testing.assert_allclose(grad, np.exp(log_p) - onehot, rtol=1e-10, atol=1e-14)
    assert sums.valid == 10001


# --- the sparse multi-hot path with class weights -----------------------------------------

@pytest.mark.parametrize("target_normalization", ["count", "sum", "none"])
def test_softmax_sparse_multi_hot_targets_with_class_weights(rng, target_normalization):
    # (64, 40), one positive in every other row: 32 of 2560 non-zero, the sparse path
    x = rng.normal(scale=2.0, size=(64, 40))
    t = np.zeros_like(x)
    t[np.arange(0, 64, 2), rng.integers(0, 40, size=32)] = 1.0
    class_weights = rng.uniform(0.1, 3.0, size=40)
    grad = np.full_like(x, np.nan)
    sums = multilabel_softmax_loss(x, t, class_weights=class_weights, target_normalization=target_normalization,
                                   grad_out=grad)
    expected = softmax_positions(x, t, class_weights=class_weights, target_normalization=target_normalization)
    np.testing.assert_allclose(sums.loss, expected.sum(), rtol=1e-12)
    # by hand: t' = t * class_weights; q = t' / count(t != 0), t' / sum(t') or t'; grad = sum(q) p - q
    weighted = t * class_weights
    divisor = {"count": np.count_nonzero(t, axis=1), "sum": weighted.sum(axis=1), "none": np.ones(64)}[
        target_normalization]
    q = weighted / np.where(divisor > 0, divisor, 1)[:, None]
    p = np.exp(_log_softmax(x))
    np.testing.assert_allclose(grad, q.sum(axis=1, keepdims=True) * p - q, rtol=1e-12, atol=1e-15)
    assert sums.valid == 32


# --- products of weights ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (300, 50), (4, 3, 5, 5)])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_class_weights_and_sample_weights_together(rng, shape, alpha):
    x = rng.normal(scale=3.0, size=shape)
    t = (rng.uniform(size=shape) < 0.3).astype(np.float64)
    class_weights = rng.uniform(0.0, 3.0, size=shape[1])
    weights = rng.uniform(size=shape[0])
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=2.0, alpha=alpha, class_weights=class_weights, weights=weights,
                              grad_out=grad)
    options = dict(gamma=2.0, alpha=alpha, class_weights=class_weights, weights=weights)
    np.testing.assert_allclose(sums.loss, sigmoid_focal_elements(x, t, **options).sum(), rtol=1e-12)
    numeric = elementwise_central_differences(lambda v: sigmoid_focal_elements(v, t, **options), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(4, 5000), (64, 40000)])
def test_focal_per_element_weights_with_rows_longer_than_a_block(rng, shape):
    x = rng.normal(scale=3.0, size=shape)
    t = (rng.uniform(size=shape) < 0.1).astype(np.float64)
    weights = rng.uniform(size=shape)
    grad = np.full_like(x, np.nan)
    sums = sigmoid_focal_loss(x, t, gamma=2.0, alpha=0.25, weights=weights, grad_out=grad)
    options = dict(gamma=2.0, alpha=0.25, weights=weights)
    np.testing.assert_allclose(sums.loss, sigmoid_focal_elements(x, t, **options).sum(), rtol=1e-11)
    numeric = elementwise_central_differences(lambda v: sigmoid_focal_elements(v, t, **options), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


# --- every path of the blocked walks ---------------------------------------------------

def _flat_indices(ncs, box):
    """Flat C-order indices into an (N, C, S) array of the elements of a box of slices."""
    grids = np.meshgrid(*(np.arange(sl.start, sl.stop) for sl in box), indexing="ij")
    return np.ravel_multi_index(tuple(g.ravel() for g in grids), ncs)


def _check_flat_cover(ncs, block_elements):
    """flat_blocks: every element exactly once, each box one contiguous run in order, no box
    over the limit. Returns the boxes."""
    boxes = list(flat_blocks(ncs, block_elements))
    seen = np.zeros(int(np.prod(ncs)), int)
    following = 0
    for box in boxes:
        flat = _flat_indices(ncs, box)
        assert flat.size <= max(1, block_elements)
        np.testing.assert_array_equal(flat, np.arange(following, following + flat.size))  # the next run
        following += flat.size
        seen[flat] += 1
    assert np.all(seen == 1)
    return boxes


@pytest.mark.parametrize("ncs,block_elements,kind", [
    ((9, 3, 4), 30, "whole samples, groups of 2, the last group partial"),
    ((7, 3, 4), 12, "one sample per block"),
    ((2, 9, 4), 10, "whole rows, 2 classes per block, the last block one class"),
    ((2, 3, 10), 4, "pieces of one row, the last piece of 2"),
    ((1, 1, 5), 5, "one block"),
    ((3, 0, 4), 8, "no classes"),
])
def test_flat_blocks_cover_every_element_once_in_contiguous_runs(ncs, block_elements, kind):
    boxes = _check_flat_cover(ncs, block_elements)
    sizes = [np.prod([sl.stop - sl.start for sl in box]) for box in boxes]
    if "partial" in kind or "last" in kind:
        assert sizes[-1] < max(sizes)


@pytest.mark.parametrize("shape", [(3000, 9), (3, 7, 5000), (1, 3, 70, 70), (1, 3, 200, 200), (4, 5000), (2, 1)])
def test_flat_blocks_default_sizes(shape):
    ncs = as_ncs(shape)
    size = int(np.prod(shape))
    limit = min(blocks.BLOCK_ELEMENTS, max(blocks.MIN_BLOCK_ELEMENTS, size // 8))
    _check_flat_cover(ncs, limit)
    assert list(flat_blocks(ncs)) == list(flat_blocks(ncs, limit))


def _check_class_cover(ncs, **sizes):
    """block_slices: every element exactly once, each block whole class vectors."""
    n, c, s = ncs
    seen = np.zeros(ncs, int)
    pieces = list(block_slices(ncs, **sizes))
    for n_slice, s_slice in pieces:
        seen[n_slice, :, s_slice] += 1
    assert np.all(seen == 1)
    return pieces


@pytest.mark.parametrize("ncs,sizes,expected", [
    # samples grouped: 2 per block of at most 24, the last group alone
    ((5, 3, 4), dict(block_elements=24), [(slice(0, 2), slice(0, 4)), (slice(2, 4), slice(0, 4)),
                                          (slice(4, 5), slice(0, 4))]),
    # a sample bigger than a block but within sample_elements: one whole sample per block
    ((3, 4, 10), dict(block_elements=8, sample_elements=100), [(slice(i, i + 1), slice(0, 10)) for i in range(3)]),
    # a sample bigger than sample_elements: cut along S in runs of 3 (12 // 4), the last of 1
    ((2, 4, 10), dict(block_elements=8, sample_elements=12, min_run=2),
     [(slice(i, i + 1), slice(j, min(10, j + 3))) for i in range(2) for j in range(0, 10, 3)]),
    # ... but never runs shorter than min_run
    ((1, 4, 10), dict(block_elements=8, sample_elements=12, min_run=5),
     [(slice(0, 1), slice(0, 5)), (slice(0, 1), slice(5, 10))]),
])
def test_block_slices_paths_with_small_sizes(monkeypatch, ncs, sizes, expected):
    monkeypatch.setattr(blocks, "MIN_BLOCK_ELEMENTS", 1)  # so that the small sizes given here apply
    assert _check_class_cover(ncs, **sizes) == expected


@pytest.mark.parametrize("shape", [(5001, 4), (3, 5, 60000), (1, 5, 10001), (2, 5, 8000), (1, 1, 1)])
def test_block_slices_default_sizes_cover_every_element(shape):
    _check_class_cover(as_ncs(shape))


def _index_softmax_by_hand(x, labels):
    log_p = _log_softmax(x)
    onehot = np.zeros_like(x)
    np.put_along_axis(onehot, labels[:, None], 1.0, axis=1)
    return -(onehot * log_p).sum(), np.exp(log_p) - onehot


@pytest.mark.parametrize("shape,path", [
    ((5001, 4), "samples in groups, the last group of one"),
    ((3, 5, 60000), "one whole sample per block"),
    ((1, 5, 10001), "one sample cut along S, the last block of one position"),
])
def test_softmax_losses_on_each_block_slices_path(rng, shape, path):
    x = rng.normal(scale=2.0, size=shape)
    labels = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    grad = np.full_like(x, np.nan)
    sums = multilabel_softmax_loss(x, labels.astype(np.float64), grad_out=grad)
    loss, expected_grad = _index_softmax_by_hand(x, labels)
    np.testing.assert_allclose(sums.loss, loss, rtol=1e-11)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)
    # dense multi-hot targets of the same labels: the dense path, the same numbers
    onehot = np.zeros_like(x)
    np.put_along_axis(onehot, labels.reshape((shape[0], 1) + shape[2:]), 1.0, axis=1)
    dense_grad = np.full_like(x, np.nan)
    dense = multilabel_softmax_loss(x, onehot, grad_out=dense_grad)
    np.testing.assert_allclose(dense.loss, loss, rtol=1e-11)
    np.testing.assert_allclose(dense_grad, expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape,path", [
    ((3000, 9), "groups of samples, the last partial"),
    ((3, 7, 5000), "whole rows, the last block one class"),
    ((1, 3, 70, 70), "pieces of rows, the last of 804"),
    ((4, 5000), "rows longer than a block"),
])
@pytest.mark.parametrize("loss", ["focal", "asymmetric"])
def test_sigmoid_losses_on_each_flat_blocks_path(rng, shape, path, loss):
    x = rng.normal(scale=3.0, size=shape)
    t = (rng.uniform(size=shape) < 0.02).astype(np.float64)  # few positives: the asymmetric sparse walk
    t[rng.uniform(size=shape) < 0.1] = -1
    weights = rng.uniform(size=shape)
    options = dict(class_weights=rng.uniform(size=shape[1]), weights=weights, ignore_label=-1)
    grad = np.full_like(x, np.nan)
    if loss == "focal":
        kernel, elements, options = sigmoid_focal_loss, sigmoid_focal_elements, dict(options, gamma=2.0, alpha=0.25)
    else:
        kernel, elements = asymmetric_loss, asymmetric_elements
        options = dict(options, gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    sums = kernel(x, t, grad_out=grad, **options)

    def reference(v):
        return elements(v, t, **options)

    np.testing.assert_allclose(sums.loss, reference(x).sum(), rtol=1e-11)
    numeric = elementwise_central_differences(reference, x)
    near_margin = np.abs(_sigmoid(x) - 0.05) < 1e-3 if loss == "asymmetric" else np.zeros(shape, bool)
    np.testing.assert_allclose(grad[~near_margin], numeric[~near_margin], rtol=1e-6, atol=1e-9)
    kept = t != -1
    assert sums.valid == np.count_nonzero(kept)
    np.testing.assert_allclose(sums.positives, t[kept].sum(), rtol=1e-12)


# --- the references the tests above rely on, against values by hand -----------------------

def test_focal_reference_by_hand():
    # x = log 3, t = 1: p = 3/4, 1 - p_t = 1/4, ce = log(4/3); alpha 0.25; class weight 2, sample weight 3
    value = sigmoid_focal_elements(np.array([[np.log(3.0)]]), np.array([[1.0]]), gamma=2.0, alpha=0.25,
                                   class_weights=[2.0], weights=np.array([3.0]))
    assert value[0, 0] == pytest.approx(6 * 0.25 * (1 / 16) * np.log(4 / 3), rel=1e-14)
    # x = 0, t = 0: ce = log 2, (1 - p_t)^gamma = 1/2^gamma; ignored: 0
    value = sigmoid_focal_elements(np.zeros((1, 2)), np.array([[0.0, -1.0]]), gamma=0.5, ignore_label=-1)
    np.testing.assert_allclose(value, [[np.log(2) / np.sqrt(2), 0.0]], rtol=1e-14)


def test_softmax_reference_by_hand():
    # scores (0, log 2, log 5): softmax (1/8, 2/8, 5/8)
    x = np.array([[0.0, np.log(2.0), np.log(5.0)]])
    assert softmax_positions(x, np.array([[0.0, 1.0, 0.0]]))[0] == pytest.approx(np.log(4.0), rel=1e-14)
    assert softmax_positions(x, np.array([1.0]))[0] == pytest.approx(np.log(4.0), rel=1e-14)
    # targets (0, 2, 1), "none": -2 log(2/8) - log(5/8)
    assert softmax_positions(x, np.array([[0.0, 2.0, 1.0]]), target_normalization="none")[0] == pytest.approx(
        -2 * np.log(2 / 8) - np.log(5 / 8), rel=1e-14)

"""Edge cases that the mutation check (``make mutants``, mutants/mutants.py) showed untested: each
test here kills at least one listed mutant that every other test let through.

Expected values come from elsewhere than the code under test: a formula evaluated by hand in
float64 (``math``), the float64 references of ``caffe_layers.reference``, or scipy.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from caffe_layers import class_weights as cw
from caffe_layers import metrics
from caffe_layers.focal import sigmoid_focal_loss
from caffe_layers.multilabel_softmax import multilabel_softmax_loss
from nets import input_layer, net, python_loss
from references import (central_differences, elementwise_central_differences, sigmoid_focal_elements,
                        softmax_positions)

caffe = pytest.importorskip("caffe")


def softplus(x):
    """log(1 + exp(x)) in float64 by hand, exact for large |x|."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def bce(x, t):
    """Sigmoid cross-entropy of one element, by hand: softplus(x) - x t."""
    return softplus(x) - x * t


# --- the focal kernel: accuracy at saturation ---------------------------------------------------

@pytest.mark.parametrize("dtype, x", [(np.float64, 40.0), (np.float64, 30.0), (np.float32, 12.0)])
def test_focal_gamma_two_of_a_confident_positive_keeps_its_digits(dtype, x):
    # t = 1, x large: 1 - p = sigmoid(-x) = e / (1 + e) with e = exp(-x); 1 - p computed as a
    # subtraction is 0 (float64, x = 40) or a few digits (float32, x = 12)
    e = math.exp(-x)
    one_minus_p = e / (1 + e)
    ce = math.log1p(e)
    expected_loss = one_minus_p ** 2 * ce
    # d/dx [q^2 ce] with q = 1 - p, dq/dx = -p (1 - p), dce/dx = -(1 - p)
    p = 1 / (1 + e)
    expected_grad = 2 * one_minus_p * (-p * one_minus_p) * ce + one_minus_p ** 2 * (-one_minus_p)
    scores = np.array([[x]], dtype=dtype)
    grad = np.empty_like(scores)
    sums = sigmoid_focal_loss(scores, np.ones_like(scores), gamma=2.0, grad_out=grad)
    rel = 1e-9 if dtype == np.float64 else 1e-4
    assert sums.loss == pytest.approx(expected_loss, rel=rel, abs=0)
    assert float(grad[0, 0]) == pytest.approx(expected_grad, rel=rel, abs=0)


def test_focal_fractional_gamma_where_q_underflows_to_zero():
    # float32 exp(-200) is 0: q = 1 - p_t = 0 exactly, and q^gamma / q must not be 0 / 0
    scores = np.array([[-200.0, 200.0, -150.0]], dtype=np.float32)
    targets = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    grad = np.empty_like(scores)
    with np.errstate(invalid="raise", divide="raise"):
        sums = sigmoid_focal_loss(scores, targets, gamma=0.5, grad_out=grad)
    assert sums.loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)


# --- the focal kernel: options that come together, and blocks that cut classes -----------------

def test_focal_class_weights_with_a_per_sample_weights_bottom(rng):
    x = rng.normal(scale=2.0, size=(5, 4))
    t = (rng.uniform(size=x.shape) < 0.4).astype(float)
    class_weights = np.array([0.5, 2.0, 0.0, 1.5])
    weights = rng.uniform(0.1, 2.0, size=5)
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, gamma=2.0, class_weights=class_weights, weights=weights, grad_out=grad)

    def reference(v):
        return sigmoid_focal_elements(v, t, gamma=2.0, class_weights=class_weights, weights=weights)
    np.testing.assert_allclose(sums.loss, reference(x).sum(), rtol=1e-12)
    np.testing.assert_allclose(grad, elementwise_central_differences(reference, x), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 3, 70, 70),    # a row of 4900 > a block of 4096: pieces of one row
                                   (2, 600, 10),      # 6000 per sample: groups of 409 classes, then 182
                                   (2, 3, 4096)])     # rows of exactly one block: no partial piece
@pytest.mark.parametrize("with_class_options", [False, True])
def test_focal_blocks_that_cut_rows_and_classes_match_float64(rng, shape, with_class_options):
    x = rng.normal(scale=2.0, size=shape)
    t = (rng.uniform(size=shape) < 0.3).astype(float)
    options = dict(gamma=2.0)
    if with_class_options:
        options.update(class_weights=rng.uniform(0.0, 2.0, size=shape[1]),
                       alpha=rng.uniform(0.1, 0.9, size=shape[1]))
    grad = np.empty_like(x)
    sums = sigmoid_focal_loss(x, t, grad_out=grad, **options)

    def reference(v):
        return sigmoid_focal_elements(v, t, **options)
    np.testing.assert_allclose(sums.loss, reference(x).sum(), rtol=1e-10)
    np.testing.assert_allclose(grad, elementwise_central_differences(reference, x), rtol=1e-5, atol=1e-8)
    assert sums.valid == x.size and sums.positives == t.sum()


# --- the multi-label softmax kernel: the sparse path and the blocked walk ------------------------

def _sparse_targets(rng, shape):
    """Multi-hot targets with one positive in every other sample: about 1% non-zeros."""
    t = np.zeros(shape)
    for n in range(0, shape[0], 2):
        index = (n, rng.integers(shape[1])) + tuple(rng.integers(d) for d in shape[2:])
        t[index] = 1.0
    return t


SPARSE_OPTIONS = [
    dict(class_weights="random"),
    dict(class_weights="random", target_normalization="sum"),
    dict(loss="kl", label_smoothing=0.1),
    dict(label_smoothing=0.2, weights="per sample"),
    dict(loss="kl", label_smoothing=0.1, class_weights="random", weights="per sample"),
]


def _softmax_against_reference(x, targets, weights, options):
    """The softmax kernel's loss and gradient against the float64 reference (the gradient by
    central differences of it); returns the kernel's sums."""
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, targets, weights=weights, grad_out=grad, **options)

    def reference(v):
        return softmax_positions(v, targets, weights=weights, **options).sum()
    np.testing.assert_allclose(sums.loss, reference(x), rtol=1e-12)
    np.testing.assert_allclose(grad, central_differences(reference, x), rtol=1e-6, atol=1e-8)
    return sums


@pytest.mark.parametrize("options", SPARSE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("shape", [(16, 40), (4, 40, 3)])
def test_softmax_sparse_multi_hot_targets_match_float64(rng, options, shape):
    x = rng.normal(scale=2.0, size=shape)
    t = _sparse_targets(rng, shape)
    assert 0 < np.count_nonzero(t) <= t.size / 16   # the kernel's sparse path
    options = dict(options)
    if options.get("class_weights") == "random":
        options["class_weights"] = rng.uniform(0.1, 3.0, size=shape[1])
    weights = rng.uniform(0.1, 2.0, size=shape[0]) if options.pop("weights", None) else None
    sums = _softmax_against_reference(x, t, weights, options)
    assert sums.valid == np.count_nonzero(t.sum(axis=1))


def test_softmax_class_index_targets_with_class_weights_and_sum_normalization(rng):
    # with target_normalization sum, q = t' / sum(t') is 1 at the label whatever its class weight
    x = rng.normal(size=(6, 4))
    labels = np.array([0, 1, 2, 3, 1, 2], dtype=float)
    class_weights = [0.5, 2.0, 0.0, 3.0]
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, labels, class_weights=class_weights, target_normalization="sum",
                                   grad_out=grad)
    log_p = log_softmax(x, axis=1)
    has = np.array([w > 0 for w in np.take(class_weights, labels.astype(int))])
    expected = -sum(log_p[i, int(c)] for i, c in enumerate(labels) if has[i])
    assert sums.loss == pytest.approx(expected, rel=1e-12)
    onehot = np.eye(4)[labels.astype(int)] * has[:, None]
    np.testing.assert_allclose(grad, softmax(x, axis=1) * has[:, None] - onehot, rtol=1e-12, atol=1e-15)
    assert sums.valid == int(has.sum())


@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.1), dict(ignore_label=255)],
                         ids=["plain", "smoothing", "ignore_label"])
@pytest.mark.parametrize("weights_shape", [(4,), (4, 3)])
def test_softmax_class_index_targets_with_a_weights_bottom(rng, options, weights_shape):
    x = rng.normal(size=(4, 5, 3))
    labels = rng.integers(0, 5, size=(4, 3)).astype(np.float64)
    if "ignore_label" in options:
        labels[1, 2] = 255
    weights = rng.uniform(0.1, 2.0, size=weights_shape)
    _softmax_against_reference(x, labels, weights, options)


@pytest.mark.parametrize("row", [[100.0, 99.0, 0.0], [-100.0, -101.0, -120.0], [-200.0, -199.0, -250.0]])
def test_softmax_class_index_targets_at_extreme_float32_scores(row):
    # exp(100) overflows float32 and exp(-100) is subnormal: the max shift must be taken here
    x = np.array([row, [0.5, 1.0, -1.0]], dtype=np.float32)
    labels = np.array([1.0, 0.0], dtype=np.float32)
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, labels, grad_out=grad)
    x64 = x.astype(np.float64)
    expected = -(log_softmax(x64[0])[1] + log_softmax(x64[1])[0])
    assert sums.loss == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(grad, softmax(x64, axis=1) - np.eye(3)[[1, 0]], atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 5, 10001),     # one big sample: pieces of 5000 positions, the last of 1
                                   (2, 4, 70000)])    # two samples bigger than a block: one block each
def test_softmax_class_index_targets_on_big_samples_match_scipy(rng, shape):
    x = rng.normal(scale=2.0, size=shape).astype(np.float32)
    labels = rng.integers(shape[1], size=(shape[0], shape[2])).astype(np.float32)
    grad = np.empty_like(x)
    sums = multilabel_softmax_loss(x, labels, grad_out=grad)
    x64 = x.astype(np.float64)
    log_p = log_softmax(x64, axis=1)
    at_label = np.take_along_axis(log_p, labels.astype(int)[:, None, :], axis=1)
    assert sums.loss == pytest.approx(-at_label.sum(), rel=1e-5)
    onehot = np.moveaxis(np.eye(shape[1])[labels.astype(int)], -1, 1)
    np.testing.assert_allclose(grad, np.exp(log_p) - onehot, atol=1e-6)
    assert sums.valid == shape[0] * shape[2]


# --- the loss layers in a real net: normalisers, weights, targets --------------------------------


def _focal_net(make_net, shape, params, weights=False, phase="TEST"):
    blobs = {"score": shape, "label": shape}
    bottoms = ["score", "label"]
    if weights:
        blobs["weight"] = (shape[0],)
        bottoms.append("weight")
    return make_net(net(input_layer(blobs), python_loss("SigmoidFocalLoss", bottoms, params)), phase=phase)


@pytest.mark.parametrize("params, label_rows, divisor", [
    # every target 0: 0 positives; the loss is the summed cross-entropy (normaliser max(1, 0) = 1)
    ({"gamma": 0, "normalization": "positives"}, [[0, 0, 0], [0, 0, 0]], 1.0),
    # soft targets summing to 0.6: normaliser max(1, 0.6) = 1, not 0.6
    ({"gamma": 0, "normalization": "positives"}, [[0.2, 0.1, 0.0], [0.3, 0.0, 0.0]], 1.0),
    # every target ignored: 0 valid, loss 0 and gradient 0
    ({"gamma": 0, "normalization": "valid", "ignore_label": -1}, [[-1, -1, -1], [-1, -1, -1]], 1.0),
    # positives with ignored entries: the ignored -1s are not subtracted from the positives
    ({"gamma": 0, "normalization": "positives", "ignore_label": -1}, [[1, -1, 1], [-1, 1, 0]], 3.0),
    ({"gamma": 0, "normalization": "positives", "ignore_label": -1}, [[1, -1, -1], [-1, 1, 1]], 3.0),
])
def test_focal_normalisers_of_degenerate_batches(make_net, params, label_rows, divisor):
    shape = (2, 3)
    n = _focal_net(make_net, shape, params)
    score = np.array([[0.5, -1.0, 2.0], [-0.3, 1.5, -2.5]])
    label = np.array(label_rows, dtype=float)
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = label
    n.forward()
    n.backward()
    x = n.blobs["score"].data.astype(np.float64)
    kept = label != -1
    total = sum(bce(x[i], label[i]) for i in np.ndindex(*shape) if kept[i])
    assert float(n.blobs["loss"].data) == pytest.approx(total / divisor, rel=1e-6, abs=1e-12)
    p = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(n.blobs["score"].diff, 3.7 * np.where(kept, p - label, 0) / divisor,
                               rtol=1e-5, atol=1e-7)


def test_focal_class_weights_and_per_sample_weights_in_a_train_net(make_net, rng):
    shape = (4, 3)
    n = _focal_net(make_net, shape, {"gamma": 2, "class_weights": [0.5, 2.0, 1.0]}, weights=True, phase="TRAIN")
    score = rng.normal(scale=2.0, size=shape)
    label = (rng.uniform(size=shape) < 0.5).astype(float)
    weight = np.array([1.0, 0.0, 2.5, 0.5])
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = label
    n.blobs["weight"].data[...] = weight
    n.forward()
    x = n.blobs["score"].data.astype(np.float64)
    expected = sigmoid_focal_elements(x, label, gamma=2.0, class_weights=[0.5, 2.0, 1.0], weights=weight).sum() / 4
    assert float(n.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)


def test_an_infinite_weight_is_refused_and_named(make_net):
    n = _focal_net(make_net, (2, 3), {"gamma": 2}, weights=True)
    n.blobs["score"].data[...] = 0.5
    n.blobs["label"].data[...] = 1.0
    n.blobs["weight"].data[...] = [1.0, np.inf]
    with pytest.raises(ValueError, match=r"^SigmoidFocalLoss: bottom 2 \(weights\) must be finite and >= 0; "
                                         r"1 are not, the first at index \(1,\): inf$"):
        n.forward()


@pytest.mark.filterwarnings("ignore:overflow encountered in reduce")
def test_huge_finite_scores_whose_float32_sum_overflows_are_not_called_non_finite(make_net):
    # 3e38 + 3e38 overflows float32, yet every score is finite and every element well classified
    n = _focal_net(make_net, (2, 3), {"gamma": 0})
    n.blobs["score"].data[...] = [[3e38, 3e38, -3e38], [3e38, -3e38, 3e38]]
    n.blobs["label"].data[...] = [[1, 1, 0], [1, 0, 1]]
    n.forward()
    n.backward()
    assert float(n.blobs["loss"].data) == 0.0
    np.testing.assert_array_equal(n.blobs["score"].diff, 0.0)


def test_a_fractional_class_index_is_refused_and_named(make_net):
    n = make_net(net(input_layer({"score": (2, 3), "label": (2,)}),
                     python_loss("MultiLabelSoftmaxLoss", ["score", "label"])))
    n.blobs["score"].data[...] = 0.0
    n.blobs["label"].data[...] = [1.0, 1.5]
    with pytest.raises(ValueError, match=r"^MultiLabelSoftmaxLoss: bottom 1 \(class-index targets\) must be "
                                         r"integers in \[0, 3\); 1 are not, the first at index \(1,\): 1\.5$"):
        n.forward()


def test_class_weights_and_class_balances_together_are_refused(make_net):
    params = {"class_weights": [1, 2], "class_balances": {"1": 1, "2": 2}}
    with pytest.raises(ValueError, match=r"^SigmoidFocalLoss: 'class_weights' and its alias 'class_balances' are "
                                         r"both given; give one$"):
        _focal_net(make_net, (2, 2), params)


@pytest.mark.parametrize("param_str", ["{'gamma': 2, 'focusing_parameter': 3}", "{'focusing_parameter': 3, 'gamma': 2}"])
def test_a_key_and_its_alias_together_are_refused_in_either_order(make_net, param_str):
    text = net(input_layer({"score": (2, 2), "label": (2, 2)}),
               python_loss("SigmoidFocalLoss", ["score", "label"])).replace("param_str: '{}'", f'param_str: "{param_str}"')
    with pytest.raises(ValueError, match=r"^SigmoidFocalLoss: '(gamma|focusing_parameter)' and another spelling of "
                                         r"'gamma' are both given; give one$"):
        make_net(text)


@pytest.mark.parametrize("clip, message", [(1, "'clip' must be in [0.0, 1.0) (got 1.0)"),
                                           (-0.1, "'clip' must be in [0.0, 1.0) (got -0.1)")])
def test_asymmetric_clip_of_one_is_refused(make_net, clip, message):
    # clip 1 would put every negative below the margin (p - 1 <= 0): no negative could ever add loss
    text = net(input_layer({"score": (2, 2), "label": (2, 2)}),
               python_loss("AsymmetricLoss", ["score", "label"], {"clip": clip}))
    with pytest.raises(ValueError) as error:
        make_net(text)
    assert str(error.value) == f"AsymmetricLoss: {message}"


# --- NetSpec: a param_str that needs escapes ----------------------------------------------------

def test_to_prototxt_keeps_a_param_str_with_backslashes(tmp_path):
    from caffe import layers as L
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    from caffe_layers import netspec
    n = caffe.NetSpec()
    n.score, n.label = L.Input(shape=[dict(dim=[2, 3]), dict(dim=[2, 3])], ntop=2)
    n.mAP = netspec.multilabel_metrics(n.score, n.label, threshold="runs\\thresholds.json")
    text = netspec.to_prototxt(n)
    parsed = text_format.Merge(text, caffe_pb2.NetParameter())
    layer = [layer for layer in parsed.layer if layer.type == "Python"][0]
    assert json.loads(layer.python_param.param_str) == {"metrics": ["mAP"], "threshold": "runs\\thresholds.json"}


# --- metrics, decoding and class weights ---------------------------------------------------------

def test_evaluate_refuses_ignore_label_one():
    with pytest.raises(ValueError, match=r"^ignore_label 1 would leave out every positive label$"):
        metrics.evaluate(np.full((3, 2), 0.5), np.ones((3, 2)), 0.5, ignore_label=1)


def test_min_count_raises_the_negatives_of_alpha_too():
    # class 0: 10 positives, 0 negatives -> raised to 1: alpha = (1/10) / (1/10 + 1/1) = 1/11;
    # class 1: 2 positives, 8 negatives: alpha = (1/2) / (1/2 + 1/8) = 0.8
    alpha = cw.class_weights([10, 2], [10, 10], kind="alpha", min_count=1)
    np.testing.assert_allclose(alpha, [1 / 11, 0.8], rtol=1e-12)


# --- the caffe-layers command ---------------------------------------------------------------------

def _files(folder):
    """{name: (bytes, mtime_ns)} of every file in folder."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.mark.parametrize("bias, total", [(-3.0, 4 / (1 + math.exp(3))),    # 4 sigmoid(-3) = 0.1897 < 1
                                         (2.0, 4 / (1 + math.exp(-2)))])   # 4 sigmoid(2) = 3.523 > 1
def test_predict_mass_refuses_scores_that_do_not_sum_to_one(tmp_path, bias, total):
    # a deploy net whose scores are the bias alone: every sample's sigmoid probabilities sum to `total`
    (tmp_path / "deploy.prototxt").write_text(
        input_layer({"data": (1, 3)}) + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "score" '
                                        'inner_product_param { num_output: 4 } }\n')
    built = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    built.params["fc"][0].data[...] = 0.0
    built.params["fc"][1].data[...] = bias
    built.save(str(tmp_path / "w.caffemodel"))
    np.savez(tmp_path / "new.npz", data=np.ones((5, 3), np.float32))
    before = _files(tmp_path)
    result = subprocess.run([sys.executable, "-m", "caffe_layers.cli", "predict", "--model", "deploy.prototxt",
                             "--weights", "w.caffemodel", "--data", "new.npz", "--mass", "0.9", "-o", "out.jsonl"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"caffe-layers predict: error: --mass needs probabilities that sum to 1 for each "
                             f"sample, but sample 0's sum to {total:.4g} (activation sigmoid); give --activation "
                             f"softmax (or a net that ends in Softmax), or decode with --threshold or --top-k\n")
    assert _files(tmp_path) == before

"""AsymmetricLoss inside real caffe.Net objects: its identities with Caffe's SigmoidCrossEntropyLoss
and with SigmoidFocalLoss, the paper's released formula, and gradients by central differences."""
import numpy as np
import pytest

from caffe_layers.testing import check_gradients
from nets import builtin_loss, input_layer, net, python_loss

caffe = pytest.importorskip("caffe")

SHAPES = [(4, 5), (2, 4, 3, 2)]


def released_asl(x, y, gamma_pos, gamma_neg, clip, eps=1e-8):
    """The paper's released AsymmetricLossOptimized/AsymmetricLoss formula (Alibaba-MIIL/ASL,
    src/loss_functions/losses.py), in float64 NumPy: per element, before its final -sum."""
    xs_pos = 1 / (1 + np.exp(-x))
    xs_neg = np.minimum(1 - xs_pos + clip, 1) if clip > 0 else 1 - xs_pos
    loss = y * np.log(np.maximum(xs_pos, eps)) + (1 - y) * np.log(np.maximum(xs_neg, eps))
    pt = xs_pos * y + xs_neg * (1 - y)
    gamma = gamma_pos * y + gamma_neg * (1 - y)
    return -loss * (1 - pt) ** gamma


def _fill(n, rng, names, shape, soft=False, scale=2.0):
    score = rng.normal(scale=scale, size=shape)
    label = rng.uniform(size=shape) if soft else (rng.uniform(size=shape) < 0.3).astype(float)
    for name in names:
        n.blobs[name].data[...] = score
    n.blobs["label"].data[...] = label
    return score, label


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalization, caffe_normalization", [
    ("batch_size", "BATCH_SIZE"), ("full", "FULL"), ("none", "NONE")])
def test_no_focusing_no_margin_is_sigmoid_cross_entropy(make_net, rng, shape, normalization, caffe_normalization):
    params = {"gamma_pos": 0, "gamma_neg": 0, "clip": 0, "normalization": normalization}
    n = make_net(net(input_layer({"ours": shape, "theirs": shape, "label": shape}),
                     python_loss("AsymmetricLoss", ["ours", "label"], params, top="asl"),
                     builtin_loss("SigmoidCrossEntropyLoss", ["theirs", "label"], "ce",
                                  f"normalization: {caffe_normalization}")))
    _fill(n, rng, ["ours", "theirs"], shape, soft=True)
    n.forward()
    n.backward()
    assert float(n.blobs["asl"].data) == pytest.approx(float(n.blobs["ce"].data), rel=1e-5)
    np.testing.assert_allclose(n.blobs["ours"].diff, n.blobs["theirs"].diff, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.5, 1, 2, 3])
def test_equal_focusing_without_margin_is_the_focal_loss_on_binary_targets(make_net, rng, gamma):
    shape = (6, 7)
    n = make_net(net(input_layer({"ours": shape, "focal": shape, "label": shape}),
                     python_loss("AsymmetricLoss", ["ours", "label"],
                                 {"gamma_pos": gamma, "gamma_neg": gamma, "clip": 0}, top="asl"),
                     python_loss("SigmoidFocalLoss", ["focal", "label"], {"gamma": gamma}, top="focal_loss")))
    _fill(n, rng, ["ours", "focal"], shape)
    n.forward()
    n.backward()
    assert float(n.blobs["asl"].data) == pytest.approx(float(n.blobs["focal_loss"].data), rel=1e-5)
    np.testing.assert_allclose(n.blobs["ours"].diff, n.blobs["focal"].diff, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("gamma_pos, gamma_neg, clip", [(0, 4, 0.05), (1, 4, 0.05), (0, 2, 0.2), (2, 2, 0)])
@pytest.mark.parametrize("detach", [False, True])
def test_values_equal_the_released_formula_at_moderate_logits(make_net, rng, gamma_pos, gamma_neg, clip, detach):
    shape = (8, 10)
    params = {"gamma_pos": gamma_pos, "gamma_neg": gamma_neg, "clip": clip, "detach_focal_weight": detach,
              "normalization": "none"}
    n = make_net(net(input_layer({"score": shape, "label": shape}),
                     python_loss("AsymmetricLoss", ["score", "label"], params)))
    score, label = _fill(n, rng, ["score"], shape, scale=4.0)
    n.forward()
    x = n.blobs["score"].data.astype(np.float64)   # |x| < 15 here: the released eps clamp is inactive
    assert np.abs(x).max() < 15
    assert float(n.blobs["loss"].data) == pytest.approx(released_asl(x, label, gamma_pos, gamma_neg, clip).sum(),
                                                        rel=1e-5)


def test_detached_gradient_holds_the_focusing_factors_constant(make_net, rng):
    """With detach_focal_weight the gradient is d/dx of the cross-entropy terms times the
    focusing factors, computed here by central differences of the released formula with those
    factors frozen."""
    shape = (3, 4)
    gamma_pos, gamma_neg, clip = 1.0, 4.0, 0.05
    n = make_net(net(input_layer({"score": shape, "label": shape}),
                     python_loss("AsymmetricLoss", ["score", "label"],
                                 {"gamma_pos": gamma_pos, "gamma_neg": gamma_neg, "clip": clip,
                                  "detach_focal_weight": True, "normalization": "none"}, loss_weight=1)))
    score, label = _fill(n, rng, ["score"], shape)
    n.forward()
    n.backward()
    x = n.blobs["score"].data.astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    factor = np.where(label == 1, (1 - p) ** gamma_pos, np.maximum(p - clip, 0) ** gamma_neg)

    def ce_terms(z):
        q = 1 / (1 + np.exp(-z))
        return -(label * np.log(q) + (1 - label) * np.log(np.minimum(1 - q + clip, 1)))
    h = 1e-6
    numeric = factor * (ce_terms(x + h) - ce_terms(x - h)) / (2 * h)
    np.testing.assert_allclose(n.blobs["score"].diff, numeric, rtol=1e-4, atol=1e-6)


CASES = [
    dict(),
    dict(gamma_pos=1, gamma_neg=4, clip=0.05),
    dict(gamma_pos=0.5, gamma_neg=2.5, clip=0.3),
    dict(class_weights=[1.0, 0.5, 2.0, 0.0]),
    dict(ignore_label=-1, normalization="valid"),
    dict(normalization="positives"),
    dict(normalization="full", gamma_pos=2),
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()) or "defaults")
@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 3, 2)])
def test_gradients_through_a_net(make_net, rng, params, shape):
    n = make_net(net(input_layer({"score": shape, "label": shape}),
                     python_loss("AsymmetricLoss", ["score", "label"], params)))
    score, label = _fill(n, rng, ["score"], shape, soft="ignore_label" not in params)
    if "ignore_label" in params:
        label[rng.uniform(size=shape) < 0.2] = -1
        n.blobs["label"].data[...] = label
    check_gradients(n, "score")


def test_per_sample_weights_and_the_probability_top(make_net, rng):
    shape = (3, 4)
    n = make_net(net(input_layer({"score": shape, "label": shape, "weight": (3,)}),
                     python_loss("AsymmetricLoss", ["score", "label", "weight"], {"clip": 0.1},
                                 extra_tops=("prob",))))
    score, label = _fill(n, rng, ["score"], shape)
    n.blobs["weight"].data[...] = [1.0, 0.0, 2.5]
    n.forward()
    x = n.blobs["score"].data.astype(np.float64)
    per_element = released_asl(x, label, 0.0, 4.0, 0.1) * np.array([1.0, 0.0, 2.5])[:, None]
    assert float(n.blobs["loss"].data) == pytest.approx(per_element.sum() / 3, rel=1e-5)
    np.testing.assert_allclose(n.blobs["prob"].data, 1 / (1 + np.exp(-x)), rtol=1e-6)
    check_gradients(n, "score")


def test_extreme_scores_stay_finite(make_net):
    shape = (2, 3)
    n = make_net(net(input_layer({"score": shape, "label": shape}),
                     python_loss("AsymmetricLoss", ["score", "label"], {"gamma_pos": 0.5, "gamma_neg": 2.5})))
    n.blobs["score"].data[...] = [[1e4, -1e4, 0], [-1e4, 1e4, 30]]
    n.blobs["label"].data[...] = [[1, 1, 0], [0, 0, 0.5]]
    n.forward()
    n.backward()
    assert np.isfinite(n.blobs["loss"].data)
    assert np.all(np.isfinite(n.blobs["score"].diff))


def test_the_caffe_tool_trains_forward_and_backward(run_caffe):
    text = ('layer { name: "data" type: "DummyData" top: "score" top: "label" dummy_data_param { '
            'shape { dim: 8 dim: 5 } shape { dim: 8 dim: 5 } data_filler { type: "gaussian" std: 2 } '
            'data_filler { type: "uniform" min: 0 max: 1 } } }\n'
            'force_backward: true\n'
            + python_loss("AsymmetricLoss", ["score", "label"], {"gamma_neg": 4, "clip": 0.05}, loss_weight=1))
    result = run_caffe("time", "-model", "{net}", "-iterations", "2", prototxt=text)
    assert result.returncode == 0, result.stderr
    assert "Initial loss: " in result.stderr

"""Both loss layers inside real caffe.Net objects: gradients by central differences, parity with
Caffe's own loss layers, the probability top, and bad input."""
import numpy as np
import pytest

from caffe_layers.testing import check_gradients
from nets import builtin_loss, input_layer, net, python_loss
from references import focal_elementwise, softmax_positions

caffe = pytest.importorskip("caffe")

FOCAL_CASES = [
    dict(gamma=0),
    dict(gamma=0.5),
    dict(gamma=2),
    dict(gamma=2, alpha=0.25),
    dict(gamma=2, alpha=[0.2, 0.4, 0.6, 0.8]),
    dict(gamma=2, class_weights=[1.0, 0.5, 2.0, 0.0]),
    dict(gamma=2, ignore_label=-1),
    dict(gamma=2, normalization="full"),
    dict(gamma=2, normalization="valid", ignore_label=-1),
    dict(gamma=2, normalization="none"),
    dict(gamma=2, normalization="positives"),
]


def _focal_data(rng, shape, params, soft=False):
    score = rng.normal(scale=2.0, size=shape)
    label = rng.uniform(size=shape) if soft else (rng.uniform(size=shape) < 0.4).astype(float)
    if params.get("ignore_label") is not None:
        label[rng.uniform(size=shape) < 0.2] = params["ignore_label"]
    return score, label


def _focal_expected(score, label, params, weight=None):
    """The normalised loss in float64, from the element-wise reference."""
    ignore = params.get("ignore_label")
    kept = np.ones(score.shape, bool) if ignore is None else label != ignore
    t = np.where(kept, label, 0)
    shape = (1, -1) + (1,) * (score.ndim - 2)
    alpha = params.get("alpha")
    alpha = np.reshape(alpha, shape) if isinstance(alpha, list) else alpha
    w = kept * np.reshape(params.get("class_weights", 1.0), shape if "class_weights" in params else ())
    if weight is not None:
        w = w * (weight.reshape((-1,) + (1,) * (score.ndim - 1)) if weight.ndim == 1 else weight)
    total = (focal_elementwise(score, t, params.get("gamma", 2), alpha) * w).sum()
    n = {"batch_size": score.shape[0], "full": score.size, "valid": kept.sum(), "none": 1,
         "positives": t.sum()}[params.get("normalization", "batch_size")]
    return total / max(1, n)


@pytest.mark.parametrize("params", FOCAL_CASES, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 3, 2)])
def test_focal_gradients_and_value_in_a_net(make_net, rng, params, shape):
    n = make_net(net(input_layer({"score": shape, "label": shape}),
                     python_loss("SigmoidFocalLoss", ["score", "label"], params)))
    score, label = _focal_data(rng, shape, params)
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = label
    n.blobs["label"].diff[...] = 7.0
    n.forward()
    expected = 3.7 * _focal_expected(n.blobs["score"].data.astype(float), label, params)
    assert 3.7 * float(n.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)
    check_gradients(n, "score")
    assert np.all(n.blobs["label"].diff == 0)  # force_backward asks; targets get zeros


@pytest.mark.parametrize("weight_shape", ["sample", "element"])
def test_focal_weights_bottom_and_soft_targets(make_net, rng, weight_shape):
    shape = (3, 4, 2)
    weight = rng.uniform(size=(3,) if weight_shape == "sample" else shape)
    n = make_net(net(input_layer({"score": shape, "label": shape, "weight": weight.shape}),
                     python_loss("SigmoidFocalLoss", ["score", "label", "weight"], {"gamma": 2})))
    score, label = _focal_data(rng, shape, {}, soft=True)
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = label
    n.blobs["weight"].data[...] = weight
    n.forward()
    expected = _focal_expected(n.blobs["score"].data.astype(float), n.blobs["label"].data.astype(float), {"gamma": 2},
                               n.blobs["weight"].data.astype(float))
    assert float(n.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)
    check_gradients(n, "score")
    assert np.all(n.blobs["weight"].diff == 0)


SOFTMAX_CASES = [
    dict(),
    dict(target_normalization="sum"),
    dict(target_normalization="none"),
    dict(label_smoothing=0.1),
    dict(loss="kl"),
    dict(class_weights=[1.0, 2.0, 0.5, 0.25, 3.0]),
    dict(normalization="full"),
    dict(normalization="valid"),
    dict(normalization="none"),
]


def _softmax_expected(score, label, params, weight=None):
    options = {k: v for k, v in params.items() if k != "normalization"}
    per_position = softmax_positions(score, label, weights=weight, **options)
    positions = per_position.size
    dense = label.shape == score.shape
    if dense:
        valid = np.count_nonzero(np.moveaxis(label, 1, -1).sum(-1) * np.ones(per_position.shape))
    else:
        valid = np.count_nonzero(label != params.get("ignore_label", np.nan))
    n = {"batch_size": score.shape[0], "full": positions, "valid": valid, "none": 1}[
        params.get("normalization", "batch_size")]
    return per_position.sum() / max(1, n)


@pytest.mark.parametrize("params", SOFTMAX_CASES, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()) or "defaults")
@pytest.mark.parametrize("shape", [(4, 5), (2, 5, 3, 2)])
@pytest.mark.parametrize("targets", ["multi-hot", "real", "index"])
def test_softmax_gradients_and_value_in_a_net(make_net, rng, params, shape, targets):
    label_shape = (shape[0],) + shape[2:] if targets == "index" else shape
    n = make_net(net(input_layer({"score": shape, "label": label_shape}),
                     python_loss("MultiLabelSoftmaxLoss", ["score", "label"], params)))
    if targets == "index":
        label = rng.integers(0, shape[1], size=label_shape).astype(float)
    else:
        label = (rng.uniform(size=shape) < 0.4) * (rng.uniform(0.5, 2.0, size=shape) if targets == "real" else 1.0)
        label[0] = 0  # a sample without positives
    n.blobs["score"].data[...] = rng.normal(scale=2.0, size=shape)
    n.blobs["label"].data[...] = label
    n.forward()
    expected = _softmax_expected(n.blobs["score"].data.astype(float), n.blobs["label"].data.astype(float), params)
    assert float(n.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)
    check_gradients(n, "score")
    assert np.all(n.blobs["label"].diff == 0)


def test_softmax_ignore_label_and_weights_bottom(make_net, rng):
    shape = (4, 5, 3)
    n = make_net(net(input_layer({"score": shape, "label": (4, 1, 3), "weight": (4, 3)}),
                     python_loss("MultiLabelSoftmaxLoss", ["score", "label", "weight"],
                                 {"ignore_label": 255, "normalization": "valid"})))
    label = rng.integers(0, 5, size=(4, 1, 3)).astype(float)
    label[0, 0, 1] = label[2, 0, 2] = 255
    weight = rng.uniform(size=(4, 3))
    n.blobs["score"].data[...] = rng.normal(size=shape)
    n.blobs["label"].data[...] = label
    n.blobs["weight"].data[...] = weight
    n.forward()
    per_position = softmax_positions(n.blobs["score"].data.astype(float), label, ignore_label=255,
                                     weights=n.blobs["weight"].data.astype(float))
    assert float(n.blobs["loss"].data) == pytest.approx(per_position.sum() / 10, rel=1e-5)
    check_gradients(n, "score")


def test_probability_tops(make_net, rng):
    shape = (3, 4, 2)
    n = make_net(net(input_layer({"score": shape, "label": shape}),
                     python_loss("SigmoidFocalLoss", ["score", "label"], {}, top="focal", extra_tops=["sigmoid"]),
                     python_loss("MultiLabelSoftmaxLoss", ["score", "label"], {}, top="softmax_loss",
                                 extra_tops=["softmax"])))
    score = rng.normal(size=shape)
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = rng.uniform(size=shape) < 0.5
    n.forward()
    np.testing.assert_allclose(n.blobs["sigmoid"].data, 1 / (1 + np.exp(-score)), rtol=1e-5)
    e = np.exp(score - score.max(axis=1, keepdims=True))
    np.testing.assert_allclose(n.blobs["softmax"].data, e / e.sum(axis=1, keepdims=True), rtol=1e-5)


NORMALIZATIONS = {"full": "FULL", "valid": "VALID", "batch_size": "BATCH_SIZE", "none": "NONE"}


@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3, 4)])
def test_focal_gamma_zero_equals_caffe_sigmoid_cross_entropy(make_net, rng, normalization, ignore, shape):
    params = {"gamma": 0, "normalization": normalization}
    loss_param = f"normalization: {NORMALIZATIONS[normalization]}"
    if ignore:
        params["ignore_label"] = -1
        loss_param += " ignore_label: -1"
    n = make_net(net(input_layer({"ours": shape, "theirs": shape, "label": shape}),
                     python_loss("SigmoidFocalLoss", ["ours", "label"], params, top="focal"),
                     builtin_loss("SigmoidCrossEntropyLoss", ["theirs", "label"], "sigmoid_ce", loss_param)))
    score, label = _focal_data(rng, shape, params)
    for name in ("ours", "theirs"):
        n.blobs[name].data[...] = score * 3
    n.blobs["label"].data[...] = label
    n.forward()
    n.backward()
    assert float(n.blobs["focal"].data) == pytest.approx(float(n.blobs["sigmoid_ce"].data), rel=1e-5)
    np.testing.assert_allclose(n.blobs["ours"].diff, n.blobs["theirs"].diff, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3, 4)])
@pytest.mark.parametrize("ours_gets", ["index", "one-hot"])
def test_softmax_equals_caffe_softmax_with_loss(make_net, rng, normalization, ignore, shape, ours_gets):
    params = {"normalization": normalization}
    loss_param = f"normalization: {NORMALIZATIONS[normalization]}"
    if ignore:
        loss_param += " ignore_label: 255"
    index_shape = (shape[0], 1) + shape[2:]
    labels = rng.integers(0, shape[1], size=index_shape).astype(float)
    if ignore:
        labels.flat[::4] = 255
    if ours_gets == "index":
        params["ignore_label"] = 255 if ignore else None
        ours_label, our_shape = labels, index_shape
    else:
        # one-hot targets; an ignored position gets no positive, which drops it the same way
        ours_label = np.zeros(shape)
        position = np.indices(index_shape)
        kept = labels != 255
        ours_label[(position[0][kept], labels[kept].astype(int)) + tuple(p[kept] for p in position[2:])] = 1
        our_shape = shape
    n = make_net(net(input_layer({"ours": shape, "theirs": shape, "ours_label": our_shape, "label": index_shape}),
                     python_loss("MultiLabelSoftmaxLoss", ["ours", "ours_label"], params, top="multilabel"),
                     builtin_loss("SoftmaxWithLoss", ["theirs", "label"], "softmax_loss", loss_param)))
    score = rng.normal(scale=3.0, size=shape)
    for name in ("ours", "theirs"):
        n.blobs[name].data[...] = score
    n.blobs["ours_label"].data[...] = ours_label
    n.blobs["label"].data[...] = labels
    n.forward()
    n.backward()
    assert float(n.blobs["multilabel"].data) == pytest.approx(float(n.blobs["softmax_loss"].data), rel=1e-5)
    np.testing.assert_allclose(n.blobs["ours"].diff, n.blobs["theirs"].diff, rtol=1e-4, atol=1e-7)


def test_train_phase_computes_the_gradient_in_forward(make_net, rng):
    shape = (4, 6)
    n = make_net(net(input_layer({"score": shape, "label": shape}),
                     python_loss("SigmoidFocalLoss", ["score", "label"], {"gamma": 2})), phase="TRAIN")
    n.blobs["score"].data[...] = rng.normal(size=shape)
    n.blobs["label"].data[...] = rng.uniform(size=shape) < 0.5
    check_gradients(n, "score")


def test_extreme_scores_in_a_net(make_net):
    shape = (2, 3)
    n = make_net(net(input_layer({"score": shape, "label": shape}),
                     python_loss("SigmoidFocalLoss", ["score", "label"], {"gamma": 0.5}, top="focal"),
                     python_loss("MultiLabelSoftmaxLoss", ["score", "label"], {}, top="softmax")))
    n.blobs["score"].data[...] = [[1e4, -1e4, 0], [-1e4, 1e4, 1e4]]
    n.blobs["label"].data[...] = [[1, 1, 0], [0, 1, 0]]
    n.forward()
    n.backward()
    assert np.isfinite(n.blobs["focal"].data) and np.isfinite(n.blobs["softmax"].data)
    assert np.all(np.isfinite(n.blobs["score"].diff))

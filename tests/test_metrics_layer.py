"""MultiLabelMetrics inside real Caffe nets: tops against scikit-learn, no gradient, bad input,
and a TEST net under `caffe train` that prints its tops."""
import json
import re
import warnings

import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import average_precision_score, f1_score

from conftest import write_h5
from nets import input_layer

caffe = pytest.importorskip("caffe")

ALL = ["mAP", "micro_f1", "macro_f1", "precision@k", "recall@k"]


def metrics_layer(params, tops=None, bottoms=("score", "label"), extra=""):
    """The layer's prototxt; tops default to the metric names with '@' spelled '_at_'."""
    tops = tops if tops is not None else [name.replace("@", "_at_") for name in params.get("metrics", ["mAP"])]
    blobs = " ".join([f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops])
    return (f'layer {{ name: "metrics" type: "Python" {blobs}\n'
            f"  python_param {{ module: \"caffe_layers\" layer: \"MultiLabelMetrics\" "
            f"param_str: '{json.dumps(params)}' }} {extra}}}\n")


def metrics_net(make_net, params, shape=(16, 5), force_backward=False, tops=None):
    text = input_layer({"score": shape, "label": shape}) + metrics_layer(params, tops)
    return make_net(("force_backward: true\n" if force_backward else "") + text)


def batch(rng, shape=(16, 5), ignore=None):
    score = np.round(rng.normal(size=shape), 1)                      # ties
    label = (rng.uniform(size=shape) < 0.35).astype(np.float32)
    label[:, 3] = 0                                                  # a class without positives
    if ignore is not None:
        label[rng.uniform(size=shape) < 0.2] = ignore
    return score, label


def expected(probs, label, ignore, threshold, k):
    """The five metrics from scikit-learn (and a loop for @k) over the kept entries."""
    valid = np.ones(label.shape, bool) if ignore is None else label != ignore
    positive = label == 1
    aps, f1s = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in range(label.shape[1]):
            y, s = positive[valid[:, c], c], probs[valid[:, c], c]
            if y.any():
                aps.append(average_precision_score(y, s))
            f1s.append(f1_score(y, s >= threshold[c], zero_division=np.nan))
    precisions, recalls = [], []
    for s, y, v in zip(probs, positive, valid):
        best = sorted(np.flatnonzero(v), key=lambda c: (-s[c], c))[:k]
        hits = sum(y[c] for c in best)
        precisions.append(hits / len(best))
        if (y & v).any():
            recalls.append(hits / (y & v).sum())
    predicted = probs >= np.asarray(threshold)
    return {"mAP": np.mean(aps), "micro_f1": f1_score(positive[valid], predicted[valid]),
            "macro_f1": np.nanmean(f1s), "precision@k": np.mean(precisions), "recall@k": np.mean(recalls)}


@pytest.mark.parametrize("params", [
    dict(metrics=ALL),
    dict(metrics=ALL, k=2, threshold=0.3, ignore_label=-1),
    dict(metrics=list(reversed(ALL)), activation="softmax", threshold=0.2, k=3),
    dict(metrics=["macro_f1", "mAP"], activation="none", threshold=0.0, ignore_label=255),
], ids=["default", "k2-ignore", "softmax", "none"])
def test_tops_equal_sklearn(make_net, rng, params):
    n = metrics_net(make_net, params)
    score, label = batch(rng, ignore=params.get("ignore_label"))
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = label
    n.forward()
    activation = params.get("activation", "sigmoid")
    probs = {"sigmoid": expit, "softmax": lambda x: scipy_softmax(x, axis=1), "none": np.asarray}[activation](
        score.astype(np.float32).astype(np.float64))
    want = expected(probs, label, params.get("ignore_label"), [params.get("threshold", 0.5)] * 5, params.get("k", 1))
    for name in params["metrics"]:
        assert float(n.blobs[name.replace("@", "_at_")].data) == pytest.approx(want[name], abs=1e-6), name
    np.testing.assert_array_equal(n.blobs["score"].data, score.astype(np.float32))   # bottoms untouched
    np.testing.assert_array_equal(n.blobs["label"].data, label)


def test_per_class_thresholds_file(make_net, rng, tmp_path):
    thresholds = [0.2, 0.4, 0.5, 0.6, 0.8]
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"thresholds": thresholds, "method": "f1"}))
    n = metrics_net(make_net, dict(metrics=["micro_f1", "macro_f1"], threshold=str(path)))
    score, label = batch(rng)
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = label
    n.forward()
    want = expected(expit(score.astype(np.float32).astype(np.float64)), label, None, thresholds, 1)
    assert float(n.blobs["micro_f1"].data) == pytest.approx(want["micro_f1"], abs=1e-6)
    assert float(n.blobs["macro_f1"].data) == pytest.approx(want["macro_f1"], abs=1e-6)
    path.write_text(json.dumps({"thresholds": thresholds[:3]}))
    with pytest.raises(ValueError, match=r"MultiLabelMetrics: 'threshold' file '.*thresholds.json' has 3 "
                                         r"thresholds but bottom 0 \(scores\) has 5 classes"):
        metrics_net(make_net, dict(metrics=["micro_f1"], threshold=str(path)))


def test_no_gradient_flows(make_net, rng):
    n = metrics_net(make_net, dict(metrics=["mAP"]), force_backward=True)
    n.blobs["score"].data[...], n.blobs["label"].data[...] = batch(rng)
    n.blobs["score"].diff[...] = 7
    n.blobs["label"].diff[...] = 7
    n.forward()
    n.backward()
    assert not n.blobs["score"].diff.any() and not n.blobs["label"].diff.any()


def test_an_undefined_batch_value_is_zero(make_net):
    n = metrics_net(make_net, dict(metrics=["mAP", "recall@k"]), shape=(4, 3))
    n.blobs["score"].data[...] = 1.0
    n.blobs["label"].data[...] = 0.0                   # no positive anywhere
    n.forward()
    assert float(n.blobs["mAP"].data) == 0 and float(n.blobs["recall_at_k"].data) == 0


@pytest.mark.parametrize("params, tops, message", [
    (dict(metrics=["mAP", "micro_f1"]), ["mAP"],
     "MultiLabelMetrics: expects one top per metric (2: mAP, micro_f1), got 1"),
    (dict(metrics=["AP"]), ["AP"], "MultiLabelMetrics: 'metrics' must be a non-empty list chosen from 'mAP', "),
    (dict(metrics=["mAP"], k=0), None, "MultiLabelMetrics: 'k' must be an integer >= 1 (got 0)"),
    (dict(activation="relu"), None, "MultiLabelMetrics: 'activation' must be one of 'sigmoid', 'softmax', 'none'"),
    (dict(thresold=0.5), None, "MultiLabelMetrics: unknown key 'thresold' in param_str"),
    (dict(threshold="missing.json"), None, "MultiLabelMetrics: 'threshold' file 'missing.json' does not exist"),
])
def test_bad_options(make_net, params, tops, message):
    with pytest.raises(ValueError) as raised:
        metrics_net(make_net, params, tops=tops)
    assert message in str(raised.value)


def test_bad_bottoms(make_net):
    with pytest.raises(ValueError, match=r"bottom 1 \(targets\) must have the scores' shape \(4, 3\), got \(4, 2\)"):
        make_net(input_layer({"score": (4, 3), "label": (4, 2)}) + metrics_layer({}))
    n = metrics_net(make_net, dict(ignore_label=-1), shape=(4, 3))
    n.blobs["label"].data[...] = 0.5
    with pytest.raises(ValueError, match=r"MultiLabelMetrics: bottom 1 \(targets\) must be 0 or 1 or the "
                                         r"ignore_label -1; 12 are not, the first at index \(0, 0\): 0.5"):
        n.forward()
    n.blobs["label"].data[...] = 0
    n.blobs["score"].data[1, 2] = np.nan
    with pytest.raises(FloatingPointError, match=r"bottom 0 \(scores\) has 1 non-finite values, the first at "
                                                 r"index \(1, 2\): nan"):
        n.forward()


def test_caffe_train_prints_the_tops_at_each_test_interval(run_caffe, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6))
    y = x[:, :4] + 0.3 * rng.normal(size=(256, 4)) > 0.5           # separable up to noise
    write_h5(tmp_path / "train.h5", x, y)
    (tmp_path / "train.txt").write_text(str(tmp_path / "train.h5") + "\n")
    net = f"""
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "train.txt" batch_size: 64 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "score" inner_product_param {{ num_output: 4
  weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "loss" type: "Python" bottom: "score" bottom: "label" top: "loss" loss_weight: 1
  python_param {{ module: "caffe_layers" layer: "SigmoidFocalLoss" param_str: '{{"gamma": 1}}' }}
  include {{ phase: TRAIN }} }}
{metrics_layer(dict(metrics=["mAP", "micro_f1", "precision@k"]), extra="include { phase: TEST } ")}"""
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.5 lr_policy: "fixed" max_iter: 40 test_iter: 4 test_interval: 20 '
        'display: 20 solver_mode: CPU snapshot_after_train: false random_seed: 1\n')
    result = run_caffe("train", "-solver", "solver.prototxt")
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.findall(r"Test net output #(\d): (\S+) = ([0-9.e+-]+)", result.stderr)
    assert [(i, name) for i, name, _ in found] == [("0", "mAP"), ("1", "micro_f1"), ("2", "precision_at_k")] * 3
    maps = [float(v) for _, name, v in found if name == "mAP"]
    assert maps[-1] > 0.9 and maps[-1] > maps[0]                    # it learned, and the layer saw it


def test_caffe_tool_prints_a_bad_option(run_caffe):
    text = ('layer { name: "data" type: "DummyData" top: "score" top: "label" dummy_data_param { '
            'shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } data_filler { type: "gaussian" std: 1 } '
            'data_filler { type: "constant" value: 1 } } }\n' + metrics_layer({"metrics": ["mAP"], "k": 0}))
    result = run_caffe("time", "-model", "{net}", "-iterations", "1", prototxt=text)
    assert result.returncode != 0
    assert "ValueError: MultiLabelMetrics: 'k' must be an integer >= 1 (got 0)" in result.stderr

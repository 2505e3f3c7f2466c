"""caffe_layers.netspec: python_param with a JSON param_str, options checked when the net is written;
and the shipped prototxt/ is exactly what examples/make_nets.py writes."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

caffe = pytest.importorskip("caffe")
from caffe import layers as L  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from caffe_layers import netspec  # noqa: E402

sys.path.insert(0, str(ROOT / "examples"))
import make_nets  # noqa: E402
from digits_data import DigitsSpec, make_digits  # noqa: E402


def inputs(n, shape=(4, 3)):
    n.score, n.label = L.Input(shape=[dict(dim=list(shape)), dict(dim=list(shape))], ntop=2)
    return n


def python_layers(proto):
    return {layer.name: layer for layer in proto.layer if layer.type == "Python"}


def test_sigmoid_focal_loss_emits_python_param_with_json_param_str():
    n = inputs(caffe.NetSpec())
    n.loss = netspec.sigmoid_focal_loss(n.score, n.label, gamma=2, alpha=0.25, normalization="valid")
    layer = python_layers(n.to_proto())["loss"]
    assert (layer.python_param.module, layer.python_param.layer) == ("caffe_layers", "SigmoidFocalLoss")
    assert json.loads(layer.python_param.param_str) == {"gamma": 2, "alpha": 0.25, "normalization": "valid"}
    assert list(layer.bottom) == ["score", "label"] and list(layer.top) == ["loss"]
    assert list(layer.loss_weight) == [1]


def test_probabilities_top_weights_and_layer_keys():
    n = inputs(caffe.NetSpec())
    n.weights = L.Input(shape=dict(dim=[4]))
    n.loss, n.prob = netspec.multilabel_softmax_loss(n.score, n.label, n.weights, probabilities=True,
                                                     loss_weight=0.5, label_smoothing=0.1,
                                                     include=dict(phase=caffe.TRAIN))
    n.mAP, n.f1 = netspec.multilabel_metrics(n.score, n.label, metrics=["mAP", "micro_f1"], threshold=0.3,
                                             name="metrics", include=dict(phase=caffe.TEST))
    layers = python_layers(n.to_proto())
    loss = layers["loss"]
    assert list(loss.bottom) == ["score", "label", "weights"] and list(loss.top) == ["loss", "prob"]
    assert list(loss.loss_weight) == [0.5, 0]           # the probabilities are an output, not a loss
    assert loss.include[0].phase == caffe_pb2.TRAIN
    assert json.loads(loss.python_param.param_str) == {"label_smoothing": 0.1}   # include is not a param_str key
    metrics = layers["metrics"]
    assert list(metrics.top) == ["mAP", "f1"] and not metrics.loss_weight
    assert metrics.include[0].phase == caffe_pb2.TEST
    assert json.loads(metrics.python_param.param_str) == {"metrics": ["mAP", "micro_f1"], "threshold": 0.3}


@pytest.mark.parametrize("helper, options, message", [
    (netspec.sigmoid_focal_loss, {"gama": 2}, r"SigmoidFocalLoss: unknown key 'gama' in param_str"),
    (netspec.sigmoid_focal_loss, {"gamma": -1}, r"SigmoidFocalLoss: 'gamma' must be in \[0.0, inf\] \(got -1.0\)"),
    (netspec.sigmoid_focal_loss, {"alpha": 1.5}, r"SigmoidFocalLoss: 'alpha' must be in"),
    (netspec.multilabel_softmax_loss, {"label_smoothing": 1}, r"MultiLabelSoftmaxLoss: 'label_smoothing'"),
    (netspec.multilabel_softmax_loss, {"normalisation": "full"}, r"MultiLabelSoftmaxLoss: unknown key 'normalisation'"),
    (netspec.multilabel_metrics, {"metrics": ["mAP", "f2"]}, r"MultiLabelMetrics: 'metrics' must be"),
    (netspec.multilabel_metrics, {"activaton": "softmax"}, r"MultiLabelMetrics: unknown key 'activaton'"),
])
def test_a_bad_option_fails_when_the_net_is_written(helper, options, message):
    n = inputs(caffe.NetSpec())
    with pytest.raises(ValueError, match=message):
        helper(n.score, n.label, **options)


def test_to_prototxt_is_readable_commented_and_the_same_net():
    n = inputs(caffe.NetSpec())
    n.loss = netspec.sigmoid_focal_loss(n.score, n.label, gamma=0)
    n.mAP = netspec.multilabel_metrics(n.score, n.label, threshold="it's.json")   # a quote: stays escaped
    text = netspec.to_prototxt(n, header="a test net\n# already a comment")
    lines = text.splitlines()
    assert lines[:2] == ["# a test net", "# already a comment"]
    assert "    param_str: '{\"gamma\": 0}'" in lines
    quoted = [line for line in lines if "it" in line and "s.json" in line]
    assert len(quoted) == 1 and quoted[0].startswith('    param_str: "{')     # left as protobuf wrote it
    at = lines.index("  loss_weight: 1")
    assert lines[at - 1] == "  " + netspec.LOSS_WEIGHT_COMMENT
    assert text.count("LossLayer") == 1                         # only the loss layer gets the comment
    assert text_format.Merge(text, caffe_pb2.NetParameter()) == n.to_proto()


def test_a_written_net_runs_in_caffe(tmp_path, rng):
    n = inputs(caffe.NetSpec(), (5, 4))
    n.loss, n.prob = netspec.sigmoid_focal_loss(n.score, n.label, gamma=0, probabilities=True)
    n.mAP, n.micro_f1 = netspec.multilabel_metrics(n.score, n.label, metrics=["mAP", "micro_f1"])
    path = tmp_path / "net.prototxt"
    path.write_text(netspec.to_prototxt(n))
    net = caffe.Net(str(path), caffe.TEST)
    x = rng.normal(size=(5, 4))
    t = (rng.random((5, 4)) < 0.5).astype(float)
    t[0] = [1, 0, 0, 0]                                      # every class ...
    t[1] = [0, 1, 1, 1]                                      # ... has a positive and a negative
    t[2] = [0, 0, 0, 0]
    net.blobs["score"].data[...] = x
    net.blobs["label"].data[...] = t
    net.forward()
    p = 1 / (1 + np.exp(-x))
    # gamma 0 is sigmoid cross-entropy, normalised by the batch size (the layer's default)
    expected = -np.sum(t * np.log(p) + (1 - t) * np.log(1 - p)) / 5
    assert float(net.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(net.blobs["prob"].data, p, rtol=1e-5)
    weights = dict(zip(net.blobs.keys(), net._blob_loss_weights))
    assert weights["loss"] == 1 and weights["prob"] == 0 and weights["mAP"] == 0


def test_importing_caffe_layers_imports_neither_caffe_nor_netspec():
    code = "import sys, caffe_layers; assert 'caffe' not in sys.modules and 'caffe_layers.netspec' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_committed_prototxt_is_what_make_nets_writes():
    generated = make_nets.committed_files()
    on_disk = {str(p.relative_to(ROOT / "prototxt")) for p in (ROOT / "prototxt").rglob("*.prototxt")}
    assert on_disk == set(generated), "run: .venv/bin/python examples/make_nets.py"
    for name, text in generated.items():
        assert (ROOT / "prototxt" / name).read_bytes() == text.encode(), \
            f"prototxt/{name} is stale: run .venv/bin/python examples/make_nets.py"


def test_every_python_loss_layer_says_why_it_has_a_loss_weight():
    for path in (ROOT / "prototxt").rglob("*.prototxt"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("loss_weight:"):
                assert lines[i - 1].strip() == netspec.LOSS_WEIGHT_COMMENT, path


@pytest.mark.parametrize("variant", list(make_nets.VARIANTS))
def test_shipped_nets_build_and_run(variant, tmp_path, monkeypatch):
    """The shipped files as they are, from a working directory with a tiny data set in runs/digits."""
    make_digits(str(tmp_path / "runs" / "digits"), sizes=(8, 8, 8), spec=DigitsSpec(seed=3))
    monkeypatch.chdir(tmp_path)
    deploy = caffe.Net(str(ROOT / "prototxt" / f"{variant}_deploy.prototxt"), caffe.TEST)
    deploy.blobs["data"].data[...] = 0.5
    prob = deploy.forward()["prob"]
    assert prob.shape == (1, 10) and np.all((prob > 0) & (prob < 1))
    train_val = str(ROOT / "prototxt" / f"{variant}_train_val.prototxt")
    assert np.isfinite(float(caffe.Net(train_val, caffe.TRAIN).forward()["loss"]))
    out = caffe.Net(train_val, caffe.TEST).forward()
    assert set(out) == {"loss", "mAP", "micro_f1"} and 0 <= float(out["mAP"]) <= 1


def test_snippets_are_layers_that_fit_under_a_net(tmp_path):
    head = ('layer { name: "in" type: "Input" top: "score" top: "label" '
            'input_param { shape { dim: 2 dim: 10 } shape { dim: 2 dim: 10 } } }\n')
    for path in sorted((ROOT / "prototxt" / "snippets").glob("*.prototxt")):
        net_path = tmp_path / path.name
        net_path.write_text(head + path.read_text())
        net = caffe.Net(str(net_path), caffe.TEST)
        net.blobs["label"].data[...] = np.eye(2, 10)
        net.forward()

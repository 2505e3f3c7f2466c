"""A user's mistakes around the loss layers, made through real nets (pycaffe and the caffe tool):
each gives one clear message, never a plausible wrong result or a silent Caffe abort."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import log_softmax

from conftest import ROOT
from nets import builtin_loss, input_layer, net, python_loss
from references import focal_elementwise
from test_errors import dummy_net

caffe = pytest.importorskip("caffe")
from caffe_layers import netspec  # noqa: E402

WARNING = "has no loss_weight, so Caffe does not count its top as a loss"


def without_loss_weight(text):
    return text.replace("loss_weight: 1 ", "")


# --- no loss_weight: the net would never learn -----------------------------------------------

def test_caffe_tool_warns_once_per_layer_without_loss_weight(run_caffe):
    text = without_loss_weight(
        dummy_net("SigmoidFocalLoss", {"gamma": 2})
        + python_loss("MultiLabelSoftmaxLoss", ["score", "label"], {}, top="softmax_loss", loss_weight=1))
    result = run_caffe("time", "-model", "{net}", "-iterations", "3", prototxt=text)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if WARNING in line]
    assert len(warnings) == 2, result.stderr
    assert any(line.startswith("caffe_layers: warning: SigmoidFocalLoss") for line in warnings)
    assert any(line.startswith("caffe_layers: warning: MultiLabelSoftmaxLoss") for line in warnings)
    assert all("add 'loss_weight: 1' to the layer" in line for line in warnings)


def test_no_warning_with_a_loss_weight_or_in_a_test_net(run_caffe, make_net, capfd):
    result = run_caffe("time", "-model", "{net}", "-iterations", "2", prototxt=dummy_net("SigmoidFocalLoss", {}))
    assert result.returncode == 0 and WARNING not in result.stderr
    make_net(without_loss_weight(dummy_net("SigmoidFocalLoss", {})), phase="TEST").forward()
    assert WARNING not in capfd.readouterr().err


def test_pycaffe_train_net_without_loss_weight_warns(make_net, capfd):
    n = make_net(without_loss_weight(dummy_net("MultiLabelSoftmaxLoss", {})), phase="TRAIN")
    n.forward()
    n.forward()
    err = capfd.readouterr().err
    assert err.count(WARNING) == 1 and "MultiLabelSoftmaxLoss" in err


# --- check_finite: what it promises ----------------------------------------------------------

def test_minus_infinity_at_a_non_label_class_is_named(make_net):
    n = make_net(net(input_layer({"score": (2, 3), "label": (2,)}),
                     python_loss("MultiLabelSoftmaxLoss", ["score", "label"], {})))
    n.blobs["score"].data[...] = [[0.0, 1.0, 2.0], [0.0, -np.inf, 2.0]]
    n.blobs["label"].data[...] = [2, 0]
    with pytest.raises(FloatingPointError, match=r"MultiLabelSoftmaxLoss: bottom 0 \(scores\) has 1 non-finite "
                                                 r"values, the first at index \(1, 1\): -inf"):
        n.forward()


@pytest.mark.parametrize("layer", ["SigmoidFocalLoss", "MultiLabelSoftmaxLoss"])
def test_huge_finite_scores_do_not_blame_weights_that_were_not_given(make_net, layer):
    n = make_net(net(input_layer({"score": (2, 3), "label": (2, 3)}),
                     python_loss(layer, ["score", "label"], {"gamma": 0} if layer == "SigmoidFocalLoss" else {})))
    n.blobs["score"].data[...] = [[3e38, -3e38, 3e38], [-3e38, 3e38, -3e38]]
    n.blobs["label"].data[...] = [[0, 1, 0], [1, 0, 1]]
    with pytest.raises(FloatingPointError) as raised:
        n.forward()
    message = str(raised.value)
    assert message.startswith(f"{layer}: the loss overflowed float32 although every score is finite: "
                              f"the largest |score| is 3e+38 at index (0, 0)")
    assert "weights" not in message


def test_tiny_dense_targets_with_sum_normalization_give_the_float64_loss(make_net):
    n = make_net(net(input_layer({"score": (2, 3), "label": (2, 3)}),
                     python_loss("MultiLabelSoftmaxLoss", ["score", "label"], {"target_normalization": "sum"},
                                 loss_weight=1)))
    score = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = [[0, 1e-40, 0], [1e-40, 0, 1e-40]]
    n.forward()
    n.backward()
    log_p = log_softmax(score.astype(np.float32).astype(np.float64), axis=1)
    # sum normalization: q = t / sum(t), so the tiny targets act as [0, 1, 0] and [1/2, 0, 1/2]
    expected = (-log_p[0, 1] - 0.5 * (log_p[1, 0] + log_p[1, 2])) / 2
    assert float(n.blobs["loss"].data) == pytest.approx(expected, rel=1e-6)
    q = np.array([[0, 1, 0], [0.5, 0, 0.5]])
    np.testing.assert_allclose(n.blobs["score"].diff, (np.exp(log_p) - q) / 2, rtol=1e-5, atol=1e-7)


# --- options that cannot be right ------------------------------------------------------------

@pytest.mark.parametrize("layer, param_str, message", [
    ("SigmoidFocalLoss", '{"gamma": 1e39}',
     "SigmoidFocalLoss: 'gamma' must be at most 1000 (got 1e+39): larger values overflow float32"),
    ("AsymmetricLoss", '{"gamma_neg": 1e39}', "AsymmetricLoss: 'gamma_neg' must be at most 1000 (got 1e+39)"),
    ("SigmoidFocalLoss", '{"gamma": 2, "gamma": 3}', "SigmoidFocalLoss: 'gamma' is given twice in param_str; give it once"),
    ("MultiLabelSoftmaxLoss", "{'axis': 1, 'axis': 1}", "MultiLabelSoftmaxLoss: 'axis' is given twice in param_str"),
    ("SigmoidFocalLoss", '{"ignore_label": 0}', "SigmoidFocalLoss: 'ignore_label' 0 is a target value (targets are in "
                                                "[0, 1]): it would ignore every negative; use a value outside [0, 1]"),
    ("AsymmetricLoss", '{"ignore_label": 1}', "AsymmetricLoss: 'ignore_label' 1 is a target value (targets are in "
                                              "[0, 1]): it would ignore every positive"),
    ("SigmoidFocalLoss", '{"class_weights": [1, 1e7, 1]}', "SigmoidFocalLoss: 'class_weights[1]' must be at most 1e+06"),
    ("SigmoidFocalLoss", '{"gamma": 1' + "0" * 400 + "}", "SigmoidFocalLoss: 'gamma' must be a finite number (got 1000"),
    ("SigmoidFocalLoss", '{"ignore_label": 1' + "0" * 400 + "}", "SigmoidFocalLoss: 'ignore_label' must be an integer or null"),
    ("SigmoidFocalLoss", '{"alpha": ' + "[" * 100000 + "]" * 100000 + "}",
     "SigmoidFocalLoss: param_str is nested too deeply to read (200011 characters); give a flat JSON object"),
])
def test_impossible_options_are_refused_under_the_caffe_tool(run_caffe, layer, param_str, message):
    quoted = f'"{param_str}"' if "'" in param_str else f"'{param_str}'"
    text = dummy_net(layer, {}).replace("param_str: '{}'", f"param_str: {quoted}")
    result = run_caffe("time", "-model", "{net}", "-iterations", "1", prototxt=text)
    assert result.returncode != 0
    assert f"caffe_layers: ValueError: {message}" in result.stderr


def test_a_directory_as_class_weights_is_named(run_caffe, tmp_path):
    (tmp_path / "weights").mkdir()
    result = run_caffe("time", "-model", "{net}", "-iterations", "1",
                       prototxt=dummy_net("SigmoidFocalLoss", {"class_weights": "weights"}))
    assert result.returncode != 0
    assert ("caffe_layers: ValueError: SigmoidFocalLoss: 'class_weights' names 'weights', which is a directory; "
            "give a JSON file holding a list of numbers") in result.stderr


@pytest.mark.parametrize("content, message", [
    ([1, -2], "'class_weights[1]' must be in [0.0, inf] (got -2.0) in the file"),
    ({"1": 2}, "'class_weights' must be a non-empty list of numbers or a path to a JSON file holding one "
               "(got {'1': 2} in the file"),
])
def test_a_class_weights_file_is_checked_like_a_list(make_net, tmp_path, monkeypatch, content, message):
    (tmp_path / "w.json").write_text(json.dumps(content))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as raised:
        make_net(dummy_net("SigmoidFocalLoss", {"class_weights": "w.json"}, score_shape=(4, 2)))
    assert message in str(raised.value) and "'w.json'" in str(raised.value)


def test_alpha_file_outside_zero_one_is_refused(make_net, tmp_path, monkeypatch):
    (tmp_path / "alpha.json").write_text("[0.5, 1.5]")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"'alpha\[1\]' must be in \[0.0, 1.0\] \(got 1.5\) in the file 'alpha.json'"):
        make_net(dummy_net("SigmoidFocalLoss", {"alpha": "alpha.json"}, score_shape=(4, 2)))


def test_batch_size_normalization_with_axis_2_divides_like_caffe(make_net, rng):
    """SoftmaxWithLoss's BATCH_SIZE divides by the product of the axes before the class axis: N H here."""
    shape = (2, 3, 4, 5)   # classes on axis 2
    labels = rng.integers(0, 4, size=(2, 3, 1, 5)).astype(float)
    n = make_net(net(input_layer({"ours": shape, "theirs": shape, "label": labels.shape}),
                     python_loss("MultiLabelSoftmaxLoss", ["ours", "label"], {"axis": 2}, top="multilabel"),
                     builtin_loss("SoftmaxWithLoss", ["theirs", "label"], "softmax_loss",
                                  "normalization: BATCH_SIZE").replace(" loss_param", " softmax_param { axis: 2 } loss_param")))
    score = rng.normal(size=shape)
    n.blobs["ours"].data[...] = score
    n.blobs["theirs"].data[...] = score
    n.blobs["label"].data[...] = labels
    n.forward()
    assert float(n.blobs["multilabel"].data) == pytest.approx(float(n.blobs["softmax_loss"].data), rel=1e-5)
    by_hand = -np.take_along_axis(log_softmax(score, axis=2), labels.astype(int), axis=2).sum() / (2 * 3)
    assert float(n.blobs["multilabel"].data) == pytest.approx(by_hand, rel=1e-5)


# --- aborts instead of messages --------------------------------------------------------------

@pytest.mark.parametrize("layer", ["SigmoidFocalLoss", "AsymmetricLoss", "MultiLabelSoftmaxLoss", "MultiLabelMetrics"])
def test_an_empty_batch_is_an_error_not_an_abort(run_caffe, layer):
    tops = {"score": (0, 3), "label": (0, 3)}
    text = input_layer(tops) + (python_loss(layer, ["score", "label"], {}, loss_weight=1)
                                if layer != "MultiLabelMetrics" else
                                python_loss(layer, ["score", "label"], {}, top="mAP", loss_weight=0))
    result = run_caffe("time", "-model", "{net}", "-iterations", "1", prototxt=text)
    assert result.returncode != 0
    assert (f"caffe_layers: ValueError: {layer}: bottom 0 has shape (0, 3), with no elements; a batch needs at "
            f"least one sample (N >= 1)") in result.stderr
    assert "Check failed" not in result.stderr


# --- missing pycaffe -------------------------------------------------------------------------

def test_importing_a_layer_without_pycaffe_names_the_fix():
    code = "import sys; sys.modules['caffe'] = None\nfrom caffe_layers import SigmoidFocalLoss"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("ImportError: caffe_layers.SigmoidFocalLoss needs pycaffe, and 'import caffe' failed: run "
                    "'make setup' (it builds Caffe into .venv), or put your Caffe's python folder on the path "
                    "(PYTHONPATH=/path/to/caffe/python)")


def test_the_numpy_math_imports_without_pycaffe():
    code = ("import sys; sys.modules['caffe'] = None\nimport numpy as np\n"
            "from caffe_layers.focal import sigmoid_focal_loss\n"
            "print(sigmoid_focal_loss(np.zeros((1, 1)), np.ones((1, 1)), gamma=0).loss)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(math.log(2), rel=1e-12)


# --- NetSpec with the seed's names -----------------------------------------------------------

def _netspec_net(make_net, make_loss, num_classes=2):
    n = caffe.NetSpec()
    shape = dict(dim=[4, num_classes])
    n.score, n.label = caffe.layers.Input(shape=[shape, shape], ntop=2)
    n.loss = make_loss(n.score, n.label)
    return make_net(netspec.to_prototxt(n))


def test_netspec_helpers_take_every_alias_the_layer_takes(make_net):
    built = _netspec_net(make_net, lambda s, l: netspec.sigmoid_focal_loss(
        s, l, focusing_parameter=0, class_balances={"1": 1.0, "2": 2.0}))
    built.blobs["score"].data[...] = [[0.0, 1.0], [2.0, -1.0], [0.5, 0.5], [-2.0, 3.0]]
    built.blobs["label"].data[...] = [[1, 0], [0, 1], [1, 1], [0, 0]]
    built.forward()
    x = built.blobs["score"].data.astype(np.float64)
    expected = (focal_elementwise(x, built.blobs["label"].data, 0.0) * [1.0, 2.0]).sum() / 4
    assert float(built.blobs["loss"].data) == pytest.approx(expected, rel=1e-6)


def test_class_balances_of_the_wrong_length_is_named_as_written(make_net):
    with pytest.raises(ValueError, match=r"SigmoidFocalLoss: 'class_balances' has 3 entries but the scores have 2 classes"):
        _netspec_net(make_net, lambda s, l: netspec.sigmoid_focal_loss(
            s, l, class_balances={"1": 1, "2": 2, "3": 3}))


# --- the focal kernel's long rows with per-element weights, through a net --------------------

@pytest.mark.parametrize("shape", [(4, 5000), (64, 40000)])
def test_focal_per_element_weights_on_long_rows_match_float64(make_net, rng, shape):
    n = make_net(net(input_layer({"score": shape, "label": shape, "weight": shape}),
                     python_loss("SigmoidFocalLoss", ["score", "label", "weight"], {"gamma": 2})), phase="TRAIN")
    score = rng.normal(scale=2.0, size=shape)
    label = (rng.uniform(size=shape) < 0.3).astype(float)
    weight = rng.uniform(size=shape)
    n.blobs["score"].data[...] = score
    n.blobs["label"].data[...] = label
    n.blobs["weight"].data[...] = weight
    n.forward()
    x, w = n.blobs["score"].data.astype(np.float64), n.blobs["weight"].data.astype(np.float64)
    expected = (focal_elementwise(x, label, 2.0) * w).sum() / shape[0]
    assert float(n.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)

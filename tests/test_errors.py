"""Bad input gives a clear error naming the layer, the key or bottom, what was expected and what
came: under pycaffe as the exception itself, under the caffe tool in its output."""
import re

import numpy as np
import pytest

from nets import input_layer, net, python_loss

caffe = pytest.importorskip("caffe")


def dummy_net(layer, params, score_shape=(4, 3), label_shape=None, label_value=1.0, score_value=None):
    """A net of DummyData (gaussian scores, constant targets) and one loss: runs under `caffe test`."""
    label_shape = label_shape or score_shape
    score_filler = ('data_filler { type: "gaussian" std: 1 }' if score_value is None
                    else f'data_filler {{ type: "constant" value: {score_value} }}')
    dims = lambda shape: "shape { " + " ".join(f"dim: {d}" for d in shape) + " }"
    return (f'layer {{ name: "data" type: "DummyData" top: "score" top: "label" dummy_data_param {{ '
            f'{dims(score_shape)} {dims(label_shape)} {score_filler} '
            f'data_filler {{ type: "constant" value: {label_value} }} }} }}\n'
            + python_loss(layer, ["score", "label"], params, loss_weight=1))


CASES = [
    ("SigmoidFocalLoss", dict(params={"gama": 2}), ValueError,
     "SigmoidFocalLoss: unknown key 'gama' in param_str"),
    ("SigmoidFocalLoss", dict(params={"gamma": -1}), ValueError,
     "SigmoidFocalLoss: 'gamma' must be in [0.0, inf] (got -1.0)"),
    ("SigmoidFocalLoss", dict(params={"alpha": [0.5, 0.5]}), ValueError,
     "SigmoidFocalLoss: 'alpha' has 2 entries but the scores have 3 classes"),
    ("SigmoidFocalLoss", dict(params={}, label_shape=(4, 2)), ValueError,
     "SigmoidFocalLoss: bottom 1 (targets) must have the scores' shape (4, 3), got (4, 2)"),
    ("SigmoidFocalLoss", dict(params={}, label_value=2.0), ValueError,
     "SigmoidFocalLoss: bottom 1 (targets) must be in [0, 1]; 12 are not, the first at index (0, 0): 2.0"),
    ("SigmoidFocalLoss", dict(params={}, score_value="inf"), FloatingPointError,
     "SigmoidFocalLoss: bottom 0 (scores) has 12 non-finite values, the first at index (0, 0): inf"),
    ("MultiLabelSoftmaxLoss", dict(params={"loss": "hinge"}), ValueError,
     "MultiLabelSoftmaxLoss: 'loss' must be one of 'cross_entropy', 'kl' (got 'hinge')"),
    ("MultiLabelSoftmaxLoss", dict(params={}, label_shape=(4, 5)), ValueError,
     "MultiLabelSoftmaxLoss: bottom 1 (targets) must be dense (4, 3) or class indices (4,), got (4, 5)"),
    ("MultiLabelSoftmaxLoss", dict(params={}, label_shape=(4,), label_value=3), ValueError,
     "MultiLabelSoftmaxLoss: bottom 1 (class-index targets) must be integers in [0, 3); 4 are not, "
     "the first at index (0,): 3.0"),
    ("MultiLabelSoftmaxLoss", dict(params={}, label_value=-1), ValueError,
     "MultiLabelSoftmaxLoss: bottom 1 (dense targets) must be finite and >= 0; 12 are not"),
    ("MultiLabelSoftmaxLoss", dict(params={"ignore_label": -1}), ValueError,
     "MultiLabelSoftmaxLoss: 'ignore_label' applies to class-index targets"),
    ("MultiLabelSoftmaxLoss", dict(params={}, score_value="nan"), FloatingPointError,
     "MultiLabelSoftmaxLoss: bottom 0 (scores) has 12 non-finite values, the first at index (0, 0): nan"),
]
IDS = [f"{layer}-{message.split(': ', 1)[1][:40]}" for layer, _, _, message in CASES]


@pytest.mark.parametrize("layer, net_args, error, message", CASES, ids=IDS)
def test_pycaffe_raises_the_error_itself(make_net, layer, net_args, error, message):
    with pytest.raises(error) as raised:
        n = make_net(dummy_net(layer, **net_args))
        n.forward()
    assert message in str(raised.value)


@pytest.mark.parametrize("layer, net_args, error, message", CASES, ids=IDS)
def test_caffe_tool_prints_the_message_and_fails(run_caffe, layer, net_args, error, message):
    result = run_caffe("time", "-model", "{net}", "-iterations", "1", prototxt=dummy_net(layer, **net_args))
    assert result.returncode != 0
    assert f"{error.__name__}: {message}" in result.stderr


def test_non_finite_check_can_be_switched_off(make_net):
    n = make_net(dummy_net("SigmoidFocalLoss", {"check_finite": False}, score_value="nan"))
    n.forward()
    assert np.isnan(n.blobs["loss"].data)


def test_wrong_number_of_bottoms(make_net):
    text = (input_layer({"score": (2, 3)}) +
            python_loss("SigmoidFocalLoss", ["score"], {}))
    with pytest.raises(ValueError, match=r"SigmoidFocalLoss: expects 2 or 3 bottoms \(scores, targets\[, weights\]\), got 1"):
        make_net(net(text))


def test_weights_must_be_non_negative(make_net):
    n = make_net(net(input_layer({"score": (2, 3), "label": (2, 3), "weight": (2,)}),
                     python_loss("SigmoidFocalLoss", ["score", "label", "weight"], {})))
    n.blobs["weight"].data[...] = [1, -2]
    with pytest.raises(ValueError, match=r"bottom 2 \(weights\) must be finite and >= 0; 1 are not, the first at index \(1,\): -2.0"):
        n.forward()


def test_seed_style_prototxt_runs_under_the_caffe_tool(run_caffe):
    seed_style = dummy_net("SigmoidFocalLoss", {}).replace(
        "param_str: '{}'", "param_str: \"{'focusing_parameter': 2, 'class_balances': {'1': 1, '2': 2, '3': 0.5}}\"")
    result = run_caffe("time", "-model", "{net}", "-iterations", "2", prototxt=seed_style)
    assert result.returncode == 0, result.stderr
    assert "Initial loss: " in result.stderr


def test_caffe_time_runs_both_layers_forward_and_backward(run_caffe):
    text = ("force_backward: true\n" + dummy_net("SigmoidFocalLoss", {"gamma": 2}, score_shape=(8, 5))
            + python_loss("MultiLabelSoftmaxLoss", ["score", "label"], {}, top="softmax_loss", loss_weight=1))
    result = run_caffe("time", "-model", "{net}", "-iterations", "2", prototxt=text)
    assert result.returncode == 0, result.stderr
    assert "Average Forward-Backward" in result.stderr
    for layer in ("loss", "softmax_loss"):  # caffe time prints each layer's mean backward time
        assert re.search(rf"\]\s+{layer}\tbackward: [0-9.e-]+ ms\.", result.stderr), result.stderr

"""param_str parsing: JSON and Python-literal dicts, aliases, and the errors for bad values."""
import json

import pytest

from caffe_layers.config import FocalConfig, SoftmaxConfig


def test_defaults():
    assert FocalConfig.from_param_str("") == FocalConfig(gamma=2.0, alpha=None, class_weights=None,
                                                         normalization="batch_size", ignore_label=None)
    assert SoftmaxConfig.from_param_str("  ") == SoftmaxConfig()


def test_json_and_python_literal_and_seed_aliases():
    assert FocalConfig.from_param_str('{"gamma": 0.5, "alpha": [0.25, 0.75], "check_finite": false}') == \
        FocalConfig(gamma=0.5, alpha=(0.25, 0.75), check_finite=False)
    seed = FocalConfig.from_param_str("{'focusing_parameter': 2, 'class_balances': {'1': 0.5, '2': 2, '3': 1}}")
    assert seed.gamma == 2.0 and seed.class_weights == (0.5, 2.0, 1.0)
    assert FocalConfig.from_param_str("{'ignore_label': None, 'normalization': 'positives'}").normalization == "positives"


def test_lists_from_json_files(tmp_path, monkeypatch):
    (tmp_path / "w.json").write_text(json.dumps([1, 2.5, 0]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alpha.json").write_text(json.dumps([0.25, 0.5, 1]))
    config = FocalConfig.from_param_str('{"class_weights": "w.json", "alpha": "alpha.json"}')
    assert config.class_weights == (1.0, 2.5, 0.0) and config.alpha == (0.25, 0.5, 1.0)
    assert SoftmaxConfig.from_param_str('{"class_weights": "w.json"}').class_weights == (1.0, 2.5, 0.0)


@pytest.mark.parametrize("param_str, message", [
    ('{"gama": 2}', "SigmoidFocalLoss: unknown key 'gama' in param_str; allowed keys: alpha, check_finite"),
    ('{"gamma": -1}', "SigmoidFocalLoss: 'gamma' must be in [0.0, inf] (got -1.0)"),
    ('{"gamma": "2"}', "SigmoidFocalLoss: 'gamma' must be a finite number (got '2')"),
    ('{"gamma": NaN}', "SigmoidFocalLoss: 'gamma' must be a finite number (got nan)"),
    ('{"alpha": 1.5}', "SigmoidFocalLoss: 'alpha' must be in [0.0, 1.0] (got 1.5)"),
    ('{"alpha": [0.5, 2]}', "SigmoidFocalLoss: 'alpha[1]' must be in [0.0, 1.0] (got 2.0)"),
    ('{"class_weights": [1, -1]}', "SigmoidFocalLoss: 'class_weights[1]' must be in [0.0, inf] (got -1.0)"),
    ('{"class_weights": "missing.json"}', "SigmoidFocalLoss: 'class_weights' names the file 'missing.json', which does not exist"),
    ('{"normalization": "mean"}', "SigmoidFocalLoss: 'normalization' must be one of 'batch_size', 'full', 'valid', 'none', 'positives' (got 'mean')"),
    ('{"ignore_label": 0.5}', "SigmoidFocalLoss: 'ignore_label' must be an integer or null (got 0.5)"),
    ('{"check_finite": 1}', "SigmoidFocalLoss: 'check_finite' must be true or false (got 1)"),
    ("{'focusing_parameter': 2, 'gamma': 2}", "SigmoidFocalLoss: 'gamma' and another spelling of 'gamma' are both given"),
    ("{'class_balances': {'1': 1, '3': 2}}", "SigmoidFocalLoss: 'class_balances' keys must be \"1\"..\"2\" (got ['1', '3'])"),
    ("[1, 2]", "SigmoidFocalLoss: param_str must be a JSON object (got list"),
    ("gamma=2", "SigmoidFocalLoss: param_str must be a JSON object or a Python-literal dict"),
    ("__import__('os').system('true')", "SigmoidFocalLoss: param_str must be a JSON object or a Python-literal dict"),
])
def test_focal_errors_name_layer_key_expected_and_got(param_str, message):
    with pytest.raises(ValueError) as error:
        FocalConfig.from_param_str(param_str)
    assert message in str(error.value)


@pytest.mark.parametrize("param_str, message", [
    ('{"label_smoothing": 1}', "MultiLabelSoftmaxLoss: 'label_smoothing' must be in [0.0, 1.0) (got 1.0)"),
    ('{"target_normalization": "mean"}', "'target_normalization' must be one of 'count', 'sum', 'none' (got 'mean')"),
    ('{"loss": "hinge"}', "MultiLabelSoftmaxLoss: 'loss' must be one of 'cross_entropy', 'kl' (got 'hinge')"),
    ('{"normalization": "positives"}', "MultiLabelSoftmaxLoss: 'normalization' must be one of 'batch_size', 'full', 'valid', 'none' (got 'positives')"),
    ('{"gamma": 2}', "MultiLabelSoftmaxLoss: unknown key 'gamma'"),
    ('{"axis": 1.5}', "MultiLabelSoftmaxLoss: 'axis' must be an integer"),
])
def test_softmax_errors(param_str, message):
    with pytest.raises(ValueError) as error:
        SoftmaxConfig.from_param_str(param_str)
    assert message in str(error.value)

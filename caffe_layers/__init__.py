"""Caffe Python layers for multi-label and imbalanced classification.

The layers are used from prototxt as ``python_param { module: "caffe_layers" layer: "..." }``.
They import ``caffe`` on first use, so the NumPy math (``caffe_layers.focal``,
``caffe_layers.multilabel_softmax``) works without Caffe.
"""
import importlib

__version__ = "0.1.0"

_LAYERS = {
    "SigmoidFocalLoss": "caffe_layers.layers",
    "MultiLabelSoftmaxLoss": "caffe_layers.layers",
    "MultiLabelMetrics": "caffe_layers.metrics_layer",
}

__all__ = sorted(_LAYERS)


def __getattr__(name):
    if name in _LAYERS:
        return getattr(importlib.import_module(_LAYERS[name]), name)
    raise AttributeError(f"module 'caffe_layers' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAYERS))

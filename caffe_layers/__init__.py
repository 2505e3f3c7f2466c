"""Caffe Python layers for multi-label and imbalanced classification.

The layers are used from prototxt as ``python_param { module: "caffe_layers" layer: "..." }``;
``caffe_layers.registry.LAYERS`` lists them. They import ``caffe`` on first use, so the NumPy
math (``caffe_layers.focal``, ``caffe_layers.asymmetric``, ``caffe_layers.multilabel_softmax``,
``caffe_layers.reference``) works without Caffe.
"""
import importlib

from .registry import LAYERS

__version__ = "0.1.0"

__all__ = sorted(LAYERS)


def __getattr__(name):
    if name not in LAYERS:
        raise AttributeError(f"module 'caffe_layers' has no attribute {name!r}")
    try:
        module = importlib.import_module(LAYERS[name].module)
    except ModuleNotFoundError as error:
        if error.name != "caffe":
            raise
        raise ImportError(f"caffe_layers.{name} needs pycaffe, and 'import caffe' failed: run 'make setup' "
                          f"(it builds Caffe into .venv), or put your Caffe's python folder on the path "
                          f"(PYTHONPATH=/path/to/caffe/python)") from None
    return getattr(module, name)


def __dir__():
    return sorted(list(globals()) + list(LAYERS))

"""The float64 references the tests compare against, and central differences.

The references themselves ship in the package, ``caffe_layers.reference`` (the formulas as the
papers write them, one element or one position at a time, independent of the blocked kernels);
this module re-exports them under the names the tests use and adds the numeric derivatives.
"""
import numpy as np

from caffe_layers.reference import (asymmetric_elements, log_sigmoid, multilabel_softmax_positions, sigmoid,
                                    sigmoid_focal_elements)

__all__ = ["asymmetric_elements", "central_differences", "elementwise_central_differences", "focal_elementwise",
           "log_sigmoid", "multilabel_softmax_positions", "sigmoid", "sigmoid_focal_elements", "softmax_positions"]


def focal_elementwise(x, t, gamma, alpha=None, w=1.0):
    """Lin et al. 2017 with torchvision's alpha_t; soft t allowed; times the element weights w."""
    return w * sigmoid_focal_elements(x, t, gamma=gamma, alpha=alpha)


def softmax_positions(x, t, axis=1, target_normalization="count", label_smoothing=0.0, loss="cross_entropy",
                      class_weights=None, weights=None, ignore_label=None):
    """Per-position loss array, shape = scores without axis; t dense or class indices."""
    return multilabel_softmax_positions(x, t, axis=axis, target_normalization=target_normalization,
                                        label_smoothing=label_smoothing, loss=loss, class_weights=class_weights,
                                        weights=weights, ignore_label=ignore_label)


def central_differences(f, x, step=1e-5):
    """d f(x) / dx elementwise for a scalar f, in float64."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        saved = x[index]
        x[index] = saved + step
        plus = f(x)
        x[index] = saved - step
        minus = f(x)
        x[index] = saved
        grad[index] = (plus - minus) / (2 * step)
    return grad


def elementwise_central_differences(f, x, step=1e-5):
    """d f_i(x) / dx_i for a function ``f`` that returns one loss per element, each depending on
    its own element only (the sigmoid losses): all elements moved at once, in float64. This is
    the gradient of ``f(x).sum()``, at the cost of two calls whatever the size of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    return (f(x + step) - f(x - step)) / (2 * step)

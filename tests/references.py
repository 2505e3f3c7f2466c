"""Float64 reference losses written straight from the papers' formulas, one element or one
position at a time, independently of caffe_layers' vectorised code."""
import numpy as np
from scipy.special import expit, log_expit, log_softmax


def focal_elementwise(x, t, gamma, alpha=None, w=1.0):
    """Lin et al. 2017 with torchvision's alpha_t; soft t allowed."""
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    p = expit(x)
    ce = -(t * log_expit(x) + (1 - t) * log_expit(-x))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return w * alpha_t * (1 - p_t) ** gamma * ce


def softmax_positions(x, t, axis=1, target_normalization="count", label_smoothing=0.0, loss="cross_entropy",
                      class_weights=None, weights=None, ignore_label=None):
    """Per-position loss array, shape = scores without axis; t dense or class indices."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    positions = x.shape[:-1]
    num_classes = x.shape[-1]
    t = np.asarray(t, dtype=np.float64)
    dense = t.shape == np.moveaxis(np.empty(x.shape), -1, axis).shape
    t = np.moveaxis(t, axis, -1) if dense else t.reshape(positions)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        weights = np.broadcast_to(weights.reshape(weights.shape + (1,) * (len(positions) - weights.ndim)), positions)
    out = np.zeros(positions)
    for pos in np.ndindex(*positions):
        if dense:
            raw = t[pos].copy()
        else:
            if ignore_label is not None and t[pos] == ignore_label:
                continue
            raw = np.zeros(num_classes)
            raw[int(t[pos])] = 1.0
        weighted = raw * (1.0 if class_weights is None else np.asarray(class_weights, dtype=np.float64))
        if target_normalization == "count":
            m = np.count_nonzero(raw)
        elif target_normalization == "sum":
            m = weighted.sum()
        else:
            m = 1.0
        if m == 0:
            continue
        q = weighted / m
        q = (1 - label_smoothing) * q + label_smoothing * q.sum() / num_classes
        value = -np.sum(q * log_softmax(x[pos]))
        if loss == "kl":
            value += sum(qc * np.log(qc) for qc in q if qc > 0)
        out[pos] = value * (1.0 if weights is None else weights[pos])
    return out


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

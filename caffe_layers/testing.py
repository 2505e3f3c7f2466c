"""Finite-difference gradient checks through a real ``caffe.Net``, for any Python layer.

Example::

    net = caffe.Net("net.prototxt", caffe.TEST)      # with force_backward: true
    net.blobs["score"].data[...] = np.random.randn(*net.blobs["score"].shape)
    check_gradients(net, "score")                      # raises AssertionError on a mismatch

The objective is Caffe's own: the sum of every loss top times its ``loss_weight``. The check
follows Caffe's C++ ``GradientChecker``: central differences with ``step``, and the analytic and
numeric derivatives must agree within ``threshold * max(|analytic|, |numeric|, 1)``.
"""
import numpy as np


def net_objective(net):
    """The value Caffe minimises: ``sum(loss_weight * top)`` over the net's loss tops."""
    total = 0.0
    for name, weight in zip(net.blobs.keys(), net._blob_loss_weights):
        if weight:
            total += weight * float(np.sum(net.blobs[name].data, dtype=np.float64))
    return total


def check_gradients(net, blob, step=1e-2, threshold=1e-3, max_checks=200, seed=0):
    """Compare ``net.blobs[blob].diff`` after backward with central differences of the objective.

    blob: an input blob (set its data first; the net must not overwrite it in forward, so feed
    it through an ``Input`` layer) and the net needs ``force_backward: true``. At most
    ``max_checks`` elements are checked, chosen at random with ``seed``. Returns the largest
    scaled error; raises ``AssertionError`` naming the worst element when it is over the threshold.
    """
    data = net.blobs[blob].data
    if not any(net._blob_loss_weights):
        raise AssertionError("the net has no loss top (set loss_weight on the Python loss layer)")
    net.forward()
    net.backward()
    analytic = net.blobs[blob].diff.copy()
    original = data.copy()
    rng = np.random.default_rng(seed)
    flat = np.arange(data.size)
    if data.size > max_checks:
        flat = rng.choice(data.size, size=max_checks, replace=False)
    worst = (0.0, None, 0.0, 0.0)
    for i in flat:
        index = np.unravel_index(i, data.shape)
        data[index] = original[index] + step
        net.forward()
        plus = net_objective(net)
        data[index] = original[index] - step
        net.forward()
        minus = net_objective(net)
        data[index] = original[index]
        numeric = (plus - minus) / (2 * step)
        computed = float(analytic[index])
        error = abs(computed - numeric) / max(abs(computed), abs(numeric), 1.0)
        if error > worst[0]:
            worst = (error, index, computed, numeric)
    net.forward()
    if worst[0] > threshold:
        error, index, computed, numeric = worst
        raise AssertionError(f"gradient of {blob!r} at {index}: backward gives {computed:.6g}, central "
                             f"differences give {numeric:.6g} (scaled error {error:.3g} > {threshold})")
    return worst[0]

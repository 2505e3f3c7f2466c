"""The prior initialisation of a sigmoid classifier's last layer (Lin et al. 2017, section 4.1).

With extreme imbalance (a dense detector's cells, where almost every output is a negative), a
score layer whose bias starts at 0 predicts p = 0.5 everywhere: the many easy negatives then
dominate the first iterations, and with cross-entropy the training can diverge. RetinaNet starts
the bias at ``b = -log((1 - pi) / pi)``, so that ``sigmoid(b) = pi``, the prior probability of a
positive (``pi = 0.01``)::

    from caffe import layers as L
    from caffe_layers.init import bias_filler

    n.score = L.Convolution(n.features, num_output=num_classes, kernel_size=3, pad=1,
                            weight_filler=dict(type="gaussian", std=0.01),
                            bias_filler=bias_filler(0.01))

which writes ``bias_filler { type: "constant" value: -4.59512 }`` into the prototxt: paste that
line into a prototxt written by hand. This module does not import ``caffe``.
"""
import math

__all__ = ["prior_bias", "bias_filler"]


def prior_bias(pi):
    """The bias ``b`` with ``sigmoid(b) = pi``: ``-log((1 - pi) / pi)``. ``pi``: a float in (0, 1)."""
    if isinstance(pi, bool) or not isinstance(pi, (int, float)):
        raise TypeError(f"prior_bias: 'pi' must be a number in (0, 1) (got {type(pi).__name__} {pi!r})")
    if not 0.0 < pi < 1.0:
        raise ValueError(f"prior_bias: 'pi' must be in (0, 1), the prior probability of a positive "
                         f"(got {pi!r}); RetinaNet uses 0.01")
    # log((1 - pi) / pi) = log1p(-pi) - log(pi): no cancellation for pi near 1
    return -(math.log1p(-pi) - math.log(pi))


def bias_filler(pi=0.01):
    """A NetSpec ``bias_filler``: ``{"type": "constant", "value": prior_bias(pi)}``."""
    return {"type": "constant", "value": prior_bias(pi)}

"""NetSpec helpers: the Python layers as ``caffe.NetSpec`` layers, with options checked at generation time.

Each helper returns ``L.Python(...)`` with ``python_param { module: "caffe_layers" layer: ... }``
and a JSON ``param_str`` built from its keyword options, after parsing that ``param_str`` with
the layer's own config class: a misspelt key or a bad value raises the layer's ``ValueError``
now, while the net is written, not when Caffe loads it::

    import caffe
    from caffe import layers as L
    from caffe_layers import netspec

    n = caffe.NetSpec()
    n.data, n.label = L.HDF5Data(hdf5_data_param=dict(source="train.txt", batch_size=64), ntop=2)
    n.score = L.InnerProduct(n.data, num_output=10)
    n.loss = netspec.sigmoid_focal_loss(n.score, n.label, gamma=2, alpha=0.25)
    n.mAP, n.micro_f1 = netspec.multilabel_metrics(n.score, n.label, metrics=["mAP", "micro_f1"],
                                                   include=dict(phase=caffe.TEST))
    open("net.prototxt", "w").write(netspec.to_prototxt(n))

Keyword options are the layer's ``param_str`` keys (see each layer's docstring), except these,
which go to the Caffe layer itself: ``name``, ``include``, ``exclude``, ``propagate_down``.
An option given as a path (``class_weights: "weights.json"``) is read at generation time too,
relative to the working directory.

``to_prototxt`` prints a ``NetSpec`` as Caffe does, then writes each ``param_str`` in single
quotes (JSON without escapes) and puts a comment above each Python loss layer's
``loss_weight`` saying why it is there; the text is parsed back and checked to be the same net.
This module imports ``caffe``; ``import caffe_layers`` does not import this module.
"""
import json
import re

from caffe import layers as L
from caffe.proto import caffe_pb2
from google.protobuf import text_format
from google.protobuf.text_encoding import CUnescape

from .registry import LAYERS, LOSS_LAYERS

MODULE = "caffe_layers"
LOSS_WEIGHT_COMMENT = "# a Python layer is not a LossLayer: without a loss_weight Caffe would not count it as a loss"
LAYER_KEYS = ("name", "include", "exclude", "propagate_down")


def param_str(options):
    """The JSON text of a ``param_str``: keys in the order given, no escapes needed in prototxt."""
    return json.dumps(options, separators=(", ", ": "))


def python_layer(layer, bottoms, options, ntop=1, loss_weight=None):
    """A ``caffe_layers`` layer named in ``caffe_layers.registry.LAYERS`` as ``L.Python(...)``.

    options: the layer's param_str keys, checked now by its config class (so a misspelt key
    raises here), and the Caffe layer keys ``LAYER_KEYS``. loss_weight: for the first top only.
    """
    layer_args = {key: options.pop(key) for key in LAYER_KEYS if key in options}
    text = param_str(options)
    LAYERS[layer].config.from_param_str(text, layer)
    if loss_weight is not None:
        # the loss top carries the weight; a probabilities top is an output, not a loss
        layer_args["loss_weight"] = loss_weight if ntop == 1 else [loss_weight] + [0] * (ntop - 1)
    return L.Python(*bottoms, ntop=ntop,
                    python_param=dict(module=MODULE, layer=layer, param_str=text), **layer_args)


def _loss_helper(layer):
    """The NetSpec helper of a loss layer: ``helper(score, label, weights=None, *, loss_weight=1,
    probabilities=False, **options)``."""
    def helper(score, label, weights=None, *, loss_weight=1, probabilities=False, **options):
        bottoms = (score, label) if weights is None else (score, label, weights)
        return python_layer(layer, bottoms, options, 2 if probabilities else 1, loss_weight)
    info = LAYERS[layer]
    helper.__name__ = helper.__qualname__ = info.netspec_helper
    helper.__doc__ = (f"A ``{layer}`` layer: {info.summary}.\n\n"
                      f"    score, label[, weights]: NetSpec tops. options: its param_str keys "
                      f"({', '.join(info.config.keys() + tuple(info.config.ALIASES))}) and the layer keys "
                      f"{', '.join(LAYER_KEYS)}.\n    probabilities: add a second top, the probabilities, with "
                      f"loss_weight 0. Returns the loss top, or ``(loss, probabilities)``.")
    return helper


sigmoid_focal_loss = _loss_helper("SigmoidFocalLoss")
asymmetric_loss = _loss_helper("AsymmetricLoss")
multilabel_softmax_loss = _loss_helper("MultiLabelSoftmaxLoss")


def multilabel_metrics(score, label, *, metrics=("mAP",), **options):
    """A ``MultiLabelMetrics`` layer: one top per name in ``metrics``, in that order.

    options: param_str keys (activation, threshold, k, ignore_label) and layer keys; pass
    ``include=dict(phase=caffe.TEST)`` to compute them only when the net is tested.
    Returns the top, or a tuple of tops.
    """
    return python_layer("MultiLabelMetrics", (score, label), dict(metrics=list(metrics), **options), len(metrics))


_PARAM_STR = re.compile(r'^(\s*)param_str: "(.*)"$')


def _readable_param_str(line):
    """``param_str: "{\\"a\\": 1}"`` -> ``param_str: '{"a": 1}'`` where that needs no escapes."""
    match = _PARAM_STR.match(line)
    if not match:
        return line
    raw = CUnescape(match.group(2)).decode("utf-8")
    if "'" in raw or "\\" in raw or not raw.isprintable():
        return line
    return f"{match.group(1)}param_str: '{raw}'"


def _comment_loss_weight(block):
    """In one ``layer { ... }`` block of a Python loss layer, put the comment above its loss_weight."""
    if not any(f'layer: "{name}"' in block for name in LOSS_LAYERS):
        return block
    lines = block.split("\n")
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("loss_weight:"))
    indent = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
    return "\n".join(lines[:at] + [indent + LOSS_WEIGHT_COMMENT] + lines[at:])


def to_prototxt(net, header=""):
    """Prototxt text of a ``caffe.NetSpec`` (or a ``NetParameter``), readable and commented.

    header: comment lines to put first (each gets ``# `` if it lacks one).
    """
    proto = net.to_proto() if hasattr(net, "to_proto") else net
    text = str(proto)
    blocks = re.split(r"(?m)^(?=layer \{)", text)
    text = "".join(_comment_loss_weight(block) for block in blocks)
    text = "\n".join(_readable_param_str(line) for line in text.split("\n"))
    if header:
        text = "".join((line if line.startswith("#") else f"# {line}".rstrip()) + "\n"
                       for line in header.splitlines()) + text
    check = text_format.Merge(text, caffe_pb2.NetParameter())
    if check != proto:
        raise AssertionError("to_prototxt: the rewritten text does not parse back to the same net")
    return text



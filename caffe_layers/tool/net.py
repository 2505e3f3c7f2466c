"""The deploy net of the ``caffe-layers`` command: the prototxt checked as Caffe reads it, the net
built first in a child process (so that a Caffe abort becomes a message), the weights checked
against it, and the data set run through it batch by batch."""
import difflib
import json
import os
import re
import subprocess
import sys

import numpy as np

from .. import decoding
from . import PYCAFFE_FIX, UsageError, import_tool, missing_module_message

SQUASHING = {"Sigmoid": "sigmoid", "Softmax": "softmax"}   # layer types whose top holds probabilities


def _import_caffe():
    os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's net-building log off the terminal
    try:
        import caffe
        from caffe.proto import caffe_pb2  # noqa: F401
    except ImportError as error:
        raise UsageError(f"pycaffe is not importable ({error}); {PYCAFFE_FIX}") from None
    return caffe


def _rule_met(rule, phase, level, stages):
    """Caffe's ``Net::StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def check_prototxt(caffe, path, option="--model"):
    """Check a net prototxt as Caffe reads it in the TEST phase; raise ``UsageError`` where Caffe would abort.

    Parsed with ``caffe_pb2``; layers are filtered by their include/exclude rules (Caffe's
    ``FilterNet``); each layer's type must be one this Caffe knows (``caffe.layer_type_list()``)
    and each bottom must be a top of an earlier layer (or a legacy ``input``).
    """
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    with open(path) as handle:
        text = handle.read()
    param = caffe_pb2.NetParameter()
    try:  # a malformed prototxt would abort Caffe itself: parse it here first
        text_format.Merge(text, param)
    except text_format.ParseError as error:
        raise UsageError(f"{option} {path!r} is not a valid net prototxt: {error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path!r} is not a text prototxt (a .caffemodel? --model takes the "
                         f"prototxt, --weights the .caffemodel)") from None
    layers, legacy = (param.layers, True) if len(param.layers) else (param.layer, False)
    if not len(layers):
        raise UsageError(f"{option} {path!r} has no layers; give the deploy prototxt of the net")
    known = set(caffe.layer_type_list())
    level, stages = param.state.level, set(param.state.stage)
    made = list(param.input)
    for layer in layers:
        if len(layer.include) and len(layer.exclude):
            raise UsageError(f"{option} {path!r}: layer {layer.name!r} has both include and exclude rules, which "
                             f"Caffe refuses; keep one of them")
        included = not len(layer.include)
        included = included and not any(_rule_met(r, caffe_pb2.TEST, level, stages) for r in layer.exclude)
        included = included or any(_rule_met(r, caffe_pb2.TEST, level, stages) for r in layer.include)
        if not included:
            continue
        if not legacy and layer.type not in known:
            if layer.type == "Python":
                fix = "this Caffe was built without Python layers; build it with WITH_PYTHON_LAYER (make setup does)"
            else:
                close = difflib.get_close_matches(layer.type, known, n=1)
                fix = f"did you mean {close[0]!r}?" if close else "check the spelling (types are case-sensitive)"
            raise UsageError(f"{option} {path!r}: layer {layer.name!r} has type {layer.type!r}, which this Caffe "
                             f"does not know; {fix}")
        if not legacy and layer.type == "Python":
            _check_python_layer(option, path, layer)
        for bottom in layer.bottom:
            if bottom not in made:
                have = ", ".join(repr(b) for b in dict.fromkeys(made)) or "none"
                raise UsageError(f"{option} {path!r}: layer {layer.name!r} takes bottom {bottom!r}, which no earlier "
                                 f"layer makes (blobs so far: {have}); fix the bottom's name or the layer order")
        made.extend(layer.top)


def _check_python_layer(option, path, layer):
    """A Python layer's module must be importable (Caffe's factory would fail with no message)."""
    import importlib.util
    module = layer.python_param.module
    try:
        found = bool(module) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(f"{option} {path!r}: Python layer {layer.name!r} names python_param module {module!r}, "
                         f"which cannot be imported here; install it or put its folder on PYTHONPATH")


PROBE = r"""
import json, os, sys
sys.path[:] = json.loads(sys.argv[1])
model, gpu, shapes = sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
def stage(name):
    sys.stderr.write("\ncaffe-layers-probe-stage: " + name + "\n")
    sys.stderr.flush()
import caffe
stage("gpu")
if gpu is None:
    caffe.set_mode_cpu()
else:
    caffe.set_device(gpu)
    caffe.set_mode_gpu()
try:
    stage("build")
    net = caffe.Net(model, caffe.TEST)
    if len(net.inputs) == 1:
        blob = net.blobs[net.inputs[0]]
        for shape in shapes:
            if tuple(shape[1:]) == tuple(blob.data.shape[1:]):
                stage("reshape " + json.dumps(shape))
                blob.reshape(*shape)
                net.reshape()
except Exception as error:
    sys.stderr.write("\ncaffe-layers-probe-error: %s: %s\n" % (type(error).__name__, error))
    sys.exit(3)
"""
FATAL = re.compile(r"^F\d+ [\d:.]+\s+\d+ ([^\]]+)\] (.*)$", re.M)


def probe_net(model, gpu=None, shapes=()):
    """Build the net (and reshape it to the batch ``shapes``) in a child process first.

    Caffe ends the whole process (``LOG(FATAL)``, exit 134) on many mistakes in a net; there it
    only ends the child, whose log is turned into a ``UsageError`` naming what Caffe said.
    """
    env = dict(os.environ, GLOG_minloglevel="2")
    argv = [sys.executable, "-c", PROBE, json.dumps(sys.path), model, json.dumps(gpu),
            json.dumps([list(map(int, s)) for s in shapes])]
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if result.returncode == 0:
        return
    log = result.stderr
    stages = re.findall(r"^caffe-layers-probe-stage: (.*)$", log, re.M)
    python_error = re.findall(r"^caffe-layers-probe-error: (.*)$", log, re.M)
    if python_error and "without setting an exception" in python_error[-1]:
        # a Python layer failed inside Caffe's factory: Python printed the real error first
        printed = re.findall(r"^(\w+(?:Error|Exception|Warning)\b.*)$", log, re.M)
        python_error = printed[-1:] or python_error
    fatal = FATAL.search(log)
    said = (python_error[-1] if python_error else
            f"{fatal.group(2).strip()} ({fatal.group(1)})" if fatal else
            (log.strip().splitlines() or [f"exit status {result.returncode}"])[-1])
    stage = stages[-1] if stages else ""
    if stage == "gpu":
        raise UsageError(f"--gpu {gpu}: this Caffe cannot use GPU {gpu} (a CPU-only build, or no such device): "
                         f"{said}; leave out --gpu to run on the CPU")
    if stage.startswith("reshape"):
        shape = tuple(json.loads(stage.split(" ", 1)[1]))
        raise UsageError(f"--model {model!r}: Caffe cannot run this net on a batch of shape {shape}: {said}; "
                         f"fix the prototxt, or try another --batch-size")
    if not stages:
        raise UsageError(f"a child process could not import pycaffe ({said}); {PYCAFFE_FIX}")
    raise UsageError(f"--model {model!r}: Caffe cannot build this net: {said}; fix the prototxt")


def _producer(net, blob):
    """(layer name, layer type) of the last layer that writes ``blob``, or None."""
    for name, layer in reversed(list(zip(net._layer_names, net.layers))):
        if blob in net.top_names[name]:
            return name, layer.type
    return None


class LoadedNet:
    """A checked net with its weights: ``net``, ``input``, ``output`` blob names, ``num_classes``,
    ``activation`` (resolved), ``probabilities`` (the scores after activation are probabilities),
    and ``detected`` (the squashing layer's (name, type), or None)."""

    def __init__(self, net, input_blob, output_blob, activation, detected):
        self.net, self.input, self.output = net, input_blob, output_blob
        self.num_classes = int(net.blobs[output_blob].data.shape[1])
        self.activation, self.detected = activation, detected
        self.probabilities = activation in ("sigmoid", "softmax") or detected is not None

    def sample_shape(self):
        return tuple(self.net.blobs[self.input].data.shape[1:])


def load_net(args, sample_shape=None, num_samples=None):
    """Check and build the deploy net, check and copy the weights, resolve the activation."""
    caffe = _import_caffe()
    check_prototxt(caffe, args.model)
    shapes = []
    if sample_shape is not None:
        batch = min(args.batch_size, num_samples)
        shapes = [(batch, *sample_shape)]
        if num_samples % batch:
            shapes.append((num_samples % batch, *sample_shape))
    probe_net(args.model, args.gpu, shapes)
    if args.gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(args.gpu)
        caffe.set_mode_gpu()
    try:
        net = caffe.Net(args.model, caffe.TEST)
    except Exception as error:  # a Python layer's own error: the probe saw the same and reported it
        raise UsageError(f"--model {args.model!r}: Caffe cannot build this net: {type(error).__name__}: "
                         f"{error}") from None
    if not net.inputs:
        raise UsageError(f"--model {args.model!r} has no Input layer to feed (write a deploy prototxt)")
    if len(net.inputs) > 1:
        raise UsageError(f"--model {args.model!r} has {len(net.inputs)} inputs ({', '.join(net.inputs)}); the tool "
                         f"feeds one: write a deploy prototxt with a single Input blob")
    try:
        from ..caffemodel import check_weights
        check_weights(net, args.weights, "--weights")
    except ImportError as error:
        raise UsageError(missing_module_message(error) or str(error)) from None
    net.copy_from(args.weights)
    if not args.output_blob and not net.outputs:
        raise UsageError(f"--model {args.model!r} leaves no output blob (every top is used by a later layer); "
                         f"name the (N, C) scores with --output-blob")
    output = args.output_blob or net.outputs[-1]
    if output not in net.blobs:
        raise UsageError(f"--output-blob {output!r} is not a blob of the net (it has: {', '.join(net.blobs)})")
    shape = net.blobs[output].data.shape
    if len(shape) != 2:
        raise UsageError(f"--output-blob {output!r} has shape {tuple(shape)}, expected (N, C) scores; give an "
                         f"(N, C) blob with --output-blob, or end the net in one (a Flatten layer)")
    activation, detected = _resolve_activation(args, net, output)
    return LoadedNet(net, net.inputs[0], output, activation, detected)


def _resolve_activation(args, net, output):
    producer = _producer(net, output)
    if producer is None or producer[1] not in SQUASHING:
        return args.activation or "sigmoid", None
    name, kind = producer
    if args.activation in ("sigmoid", "softmax"):
        raise UsageError(f"--activation {args.activation}: the output blob {output!r} is made by the {kind} layer "
                         f"{name!r}, so it already holds probabilities and would be squashed twice; leave out "
                         f"--activation (or give --activation none), or pick the scores before it with "
                         f"--output-blob")
    return "none", producer


def run_net(loaded, dataset, batch_size, desc):
    """Forward the whole data set; return the activated ``(N, C)`` float64 scores."""
    tqdm = import_tool("tqdm").tqdm
    net, blob = loaded.net, loaded.net.blobs[loaded.input]
    outputs = []
    with tqdm(total=len(dataset), desc=desc, unit="sample", disable=None) as progress:
        for start in range(0, len(dataset), batch_size):
            batch = dataset.batch(start, start + batch_size)
            if blob.data.shape[0] != len(batch):
                blob.reshape(*batch.shape)
                net.reshape()
            blob.data[...] = batch
            net.forward()
            outputs.append(net.blobs[loaded.output].data.astype(np.float64))
            progress.update(len(batch))
    scores = np.concatenate(outputs)
    bad = ~np.isfinite(scores)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UsageError(f"the net's output {loaded.output!r} is not finite ({scores[row, col]}) for sample {row}, "
                         f"class {col} ({int(bad.any(axis=1).sum())} samples affected); check the weights (NaN "
                         f"or huge values) and the scale of the data")
    return decoding.activate(scores, loaded.activation)

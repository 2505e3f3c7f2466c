#!/usr/bin/env python3
"""Smoke test for a Caffe build that is to run caffe_layers.

Checks that pycaffe imports and has the Python layer, then runs forward and backward through a
small net with both loss layers, SigmoidFocalLoss and MultiLabelSoftmaxLoss, in CPU mode (and in
GPU mode with --gpu), and checks that the losses are finite and the score gradients non-zero.

    python3 docker/smoke_test.py                        # any build, CPU mode
    python3 docker/smoke_test.py --require-cuda-build   # also: built with CUDA and working NCCL ids
    python3 docker/smoke_test.py --gpu                  # also run the net on GPU 0 (needs a GPU)

docker/Dockerfile runs it with --require-cuda-build, docker/Dockerfile.cpu without. A Docker build
has no GPU, so the net runs on the CPU there; the checks on the build itself need no GPU.
"""
import argparse
import importlib
import os
import sys
import tempfile

import numpy as np

N, C = 4, 5  # scores and targets are (N, C)
NCCL_UNIQUE_ID_BYTES = 128  # nccl.h

NET = """
name: "caffe_layers_smoke"
force_backward: true  # backpropagate to the Input blob "scores" so its gradient can be checked
layer {
  name: "input" type: "Input" top: "scores" top: "targets"
  input_param { shape { dim: %(N)d dim: %(C)d } shape { dim: %(N)d dim: %(C)d } }
}
layer {
  name: "focal" type: "Python" bottom: "scores" bottom: "targets" top: "focal"
  python_param { module: "caffe_layers" layer: "SigmoidFocalLoss" param_str: '{"gamma": 2}' }
  loss_weight: 1  # a Python layer is not a LossLayer: Caffe counts its top as a loss only when told
}
layer {
  name: "softmax" type: "Python" bottom: "scores" bottom: "targets" top: "softmax"
  python_param { module: "caffe_layers" layer: "MultiLabelSoftmaxLoss" }
  loss_weight: 1
}
""" % {"N": N, "C": C}


def fail(message):
    sys.exit("smoke test FAILED: " + message)


def check(condition, message):
    if not condition:
        fail(message)


def has_nccl(caffe):
    """True when pycaffe was compiled with USE_NCCL."""
    if hasattr(caffe, "has_nccl"):
        return bool(caffe.has_nccl())
    # Older pycaffe: the NCCL class always exists, new_uid only with USE_NCCL.
    return hasattr(caffe, "NCCL") and hasattr(caffe.NCCL, "new_uid")


def links_cudart():
    """True when a CUDA runtime library is loaded into this process (so Caffe was built with CUDA)."""
    with open("/proc/self/maps") as maps:
        return any("libcudart" in line for line in maps)


def run_net(caffe, path, mode):
    if mode == "gpu":
        caffe.set_mode_gpu()
        caffe.set_device(0)
    else:
        caffe.set_mode_cpu()
    net = caffe.Net(path, caffe.TRAIN)
    rng = np.random.RandomState(0)
    net.blobs["scores"].data[...] = rng.normal(0.0, 2.0, size=(N, C))
    targets = np.zeros((N, C))
    targets[np.arange(N), np.arange(N) % C] = 1   # one positive in every row ...
    targets[0, C - 1] = targets[2, 0] = 1         # ... and two in some: multi-label
    net.blobs["targets"].data[...] = targets

    tops = net.forward()
    losses = {name: float(np.asarray(tops[name]).ravel()[0]) for name in ("focal", "softmax")}
    for name, value in losses.items():
        check(np.isfinite(value), "%s mode: loss %r is not finite (%r)" % (mode, name, value))
        check(value > 0, "%s mode: loss %r should be > 0 for random scores (got %r)" % (mode, name, value))

    net.backward()
    grad = net.blobs["scores"].diff
    check(np.all(np.isfinite(grad)), "%s mode: the gradient of the scores is not finite" % mode)
    check(np.abs(grad).max() > 0, "%s mode: the gradient of the scores is all zero" % mode)
    check(np.all(net.blobs["targets"].diff == 0),
          "%s mode: the layers wrote a non-zero gradient into the targets" % mode)
    print("smoke test: %s mode ok (focal %.4f, softmax %.4f)" % (mode, losses["focal"], losses["softmax"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--require-cuda-build", action="store_true",
                        help="fail unless Caffe was built with CUDA and NCCL")
    parser.add_argument("--gpu", action="store_true", help="also run the net on GPU 0")
    args = parser.parse_args()

    os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's net set-up log quiet
    try:
        import caffe
    except ImportError as error:
        fail("cannot import caffe (%s); is Caffe's python/ directory on PYTHONPATH?" % error)
    try:
        importlib.import_module("caffe_layers")  # as Caffe will, by the name in python_param
    except ImportError as error:
        fail("cannot import caffe_layers (%s); is the package installed?" % error)

    check("Python" in caffe.layer_type_list(),
          "this Caffe was built without the Python layer (BUILD_python_layer / WITH_PYTHON_LAYER)")
    if args.require_cuda_build:
        check(links_cudart(), "this Caffe was built without CUDA (CPU_ONLY): libcudart is not loaded")
        check(has_nccl(caffe), "this Caffe was built without NCCL (USE_NCCL): multi-GPU training "
                               "with Python layers (python/train.py) needs it")
        # train.py hands this id to every GPU process; it must arrive whole (needs no GPU).
        uid = caffe.NCCL.new_uid()
        check(len(uid) == NCCL_UNIQUE_ID_BYTES,
              "caffe.NCCL.new_uid() returned %d bytes, not %d: pycaffe cuts the NCCL id at its first "
              "NUL byte (the _caffe.cpp patch of scripts/build_caffe.sh did not apply)" % (len(uid), NCCL_UNIQUE_ID_BYTES))
        print("smoke test: Caffe built with CUDA and NCCL")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "smoke.prototxt")
        with open(path, "w") as handle:
            handle.write(NET)
        run_net(caffe, path, "cpu")
        if args.gpu:
            run_net(caffe, path, "gpu")


if __name__ == "__main__":
    main()

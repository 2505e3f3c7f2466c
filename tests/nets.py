"""Prototxt text for test nets: Input blobs feeding one or more loss layers."""
import json


def input_layer(blobs):
    """blobs: {name: shape}. One Input layer with a top per blob."""
    tops = " ".join(f'top: "{name}"' for name in blobs)
    shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in shape) + " }" for shape in blobs.values())
    return f'layer {{ name: "input" type: "Input" {tops} input_param {{ {shapes} }} }}\n'


def python_loss(layer, bottoms, params=None, top="loss", loss_weight=3.7, extra_tops=(), name=None):
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    tops = " ".join(f'top: "{t}"' for t in (top,) + tuple(extra_tops))
    param_str = json.dumps(params or {})
    weights = f"loss_weight: {loss_weight} " + "loss_weight: 0 " * len(extra_tops)
    return (f'layer {{ name: "{name or top}" type: "Python" {bottom} {tops}\n'
            f"  python_param {{ module: \"caffe_layers\" layer: \"{layer}\" param_str: '{param_str}' }}\n"
            f"  {weights}}}\n")


def builtin_loss(layer_type, bottoms, top, loss_param="", loss_weight=3.7):
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    return (f'layer {{ name: "{top}" type: "{layer_type}" {bottom} top: "{top}" '
            f"loss_weight: {loss_weight} loss_param {{ {loss_param} }} }}\n")


def net(*layers, force_backward=True):
    return ("force_backward: true\n" if force_backward else "") + "".join(layers)

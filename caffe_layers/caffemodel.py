"""Does a weights file fit a net? Checked here, before Caffe copies it.

Caffe's ``Net::CopyTrainedLayersFrom`` silently skips every layer of the net that the weights do
not name (the net then runs with its random initial values: plausible-looking figures of an
untrained net), and it aborts the whole process (``LOG(FATAL)``, exit 134) on a shape mismatch.
``check_weights`` applies Caffe's own rules first and raises ``ValueError`` with one line instead:

* every layer of the net that has parameters (``net.params``) must be in the weights by name;
* a layer of the weights that the net has must bring exactly the net's number of blobs;
* each blob must have the net's shape, compared as ``Blob::ShapeEquals`` does: a blob with a
  ``shape`` field must match it exactly; a legacy blob (``num``/``channels``/``height``/``width``,
  written by Caffe before 2015) matches when the net's shape, padded with leading 1s to four axes,
  equals ``(num, channels, height, width)`` -- so an InnerProduct weight ``(out, in)`` matches a
  legacy ``(1, 1, out, in)``, and a bias ``(out,)`` matches ``(1, 1, 1, out)``;
* each blob must hold as many values as its shape says (``Blob::FromProto``'s ``count_`` check).

Both weight formats Caffe reads are checked, chosen as ``Net::CopyTrainedLayersFrom`` chooses: a
name ending in ``.h5`` is Caffe's HDF5 weights (group ``data/<layer>/<blob index>``, shapes
compared exactly; a blob left out because it shares another layer's parameters is accepted, as
in Caffe), anything else a binary ``NetParameter`` (``.caffemodel``, the ``layer`` field or the
legacy V1 ``layers`` field).
"""
import os

LEGACY_DIMS = ("num", "channels", "height", "width")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_weights(net, path, option="--weights", *, allow_missing=()):
    """Raise ``ValueError`` unless the weights file ``path`` fits the ``caffe.Net`` ``net``.

    ``option`` names the file in the message (a command-line option, or "weights").
    ``allow_missing``: names of the net's layers that may be absent from the file (new layers
    of a net being fine-tuned, which start from their fillers); every other layer with
    parameters must be there. Returns the names of the layers the file holds, in its order.
    """
    who = f"{option} {str(path)!r}"
    if not os.path.isfile(path):
        raise ValueError(f"{who} does not exist or is not a file; give the .caffemodel the training wrote")
    expected = {name: [tuple(blob.data.shape) for blob in blobs] for name, blobs in net.params.items()}
    if str(path).endswith(".h5"):
        held = _hdf5_layers(net, path, who, expected)
    else:
        held = _binary_layers(path, who, expected, list(net._layer_names))
    missing = [name for name in expected if name not in held and name not in set(allow_missing)]
    if missing:
        name = missing[0]
        held = f"they hold {_names(held)}" if held else "they hold no layers"
        raise ValueError(f"{who} does not fit the net: its layer {name!r} (parameters "
                         f"{_shapes(expected[name])}) is not in the weights ({held}; {len(missing)} of the "
                         f"net's {len(expected)} layers with parameters are missing), so it would run with "
                         f"random initial values; give the weights trained with this prototxt")
    return held


def _names(names, limit=6):
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _shapes(shapes):
    return ", ".join(str(tuple(s)) for s in shapes) or "none"


def _count(shape):
    count = 1
    for d in shape:
        count *= int(d)
    return count


# ---------------------------------------------------------------- binary NetParameter

def _binary_layers(path, who, expected, net_layers):
    """Check a binary NetParameter; return the names of the layers it holds, in its order."""
    from caffe.proto import caffe_pb2
    from google.protobuf.message import DecodeError
    with open(path, "rb") as handle:
        content = handle.read()
    if not content:
        raise ValueError(f"{who} is empty (0 bytes): it holds no trained layer; give the .caffemodel the "
                         f"training wrote (a run cut short can leave an empty file)")
    hint = _not_netparameter_hint(path, content)
    trained = caffe_pb2.NetParameter()
    try:
        trained.ParseFromString(content)
    except (DecodeError, ValueError, RuntimeError):
        raise ValueError(f"{who} is not a Caffe model (a binary NetParameter, as a .caffemodel){hint}") from None
    if len(trained.layer) and len(trained.layers):
        raise ValueError(f"{who} holds both 'layer' and legacy 'layers' fields, which Caffe refuses to read; "
                         f"give a .caffemodel written by Caffe")
    layers = [(layer.name, layer.blobs) for layer in trained.layer] or \
             [(layer.name or layer.layer.name, layer.blobs or layer.layer.blobs) for layer in trained.layers]
    if not layers:
        raise ValueError(f"{who} holds no layers: it is not a trained Caffe model{hint or ''}; give the "
                         f".caffemodel the training wrote")
    net_layer_set = set(net_layers)
    for name, blobs in layers:                     # as Caffe copies: every source layer the net has
        if name not in net_layer_set:
            continue                               # Caffe ignores layers the net does not have
        want = expected.get(name, [])
        if len(blobs) != len(want):
            raise ValueError(f"{who} does not fit the net: layer {name!r} has {len(blobs)} parameter blob(s) "
                             f"in the weights ({_shapes(_proto_shape(b) for b in blobs)}) but the net's has "
                             f"{len(want)} ({_shapes(want)}); give the weights trained with this prototxt")
        for j, (blob, shape) in enumerate(zip(blobs, want)):
            if not _shape_equals(shape, blob):
                legacy = " (legacy num, channels, height, width)" if _is_legacy(blob) else ""
                raise ValueError(f"{who} does not fit the net: layer {name!r} parameter {j} has shape "
                                 f"{_proto_shape(blob)}{legacy} in the weights but the net's is {shape}; give "
                                 f"the weights trained with this prototxt")
            values = len(blob.double_data) or len(blob.data)
            if values != _count(shape):
                raise ValueError(f"{who} is truncated or corrupt: layer {name!r} parameter {j} of shape {shape} "
                                 f"holds {values} values instead of {_count(shape)}; give an intact .caffemodel")
    return list(dict.fromkeys(name for name, _ in layers))


def _is_legacy(blob):
    return any(blob.HasField(d) for d in LEGACY_DIMS)


def _proto_shape(blob):
    if _is_legacy(blob):
        return tuple(int(getattr(blob, d)) for d in LEGACY_DIMS)
    return tuple(int(d) for d in blob.shape.dim)


def _shape_equals(shape, blob):
    """Caffe's ``Blob::ShapeEquals(const BlobProto&)`` for a blob of ``shape``."""
    if _is_legacy(blob):
        # LegacyShape(i) reads the shape from its end and pads missing leading axes with 1
        return len(shape) <= 4 and (1,) * (4 - len(shape)) + tuple(shape) == _proto_shape(blob)
    return tuple(shape) == _proto_shape(blob)


def _not_netparameter_hint(path, content):
    if str(path).endswith(".solverstate"):
        return ": it is a solver state; give the .caffemodel saved beside it"
    if content.startswith(HDF5_SIGNATURE):
        return ": it is an HDF5 file, and Caffe reads HDF5 weights only from a name ending in .h5"
    if content.startswith(b"PK\x03\x04") or content.startswith(b"\x93NUMPY"):
        return ": it is a NumPy file"
    try:
        content[:200].decode("ascii")
        return ": it is a text file (a prototxt? --model takes the prototxt, --weights the .caffemodel)"
    except UnicodeDecodeError:
        return ""


# ---------------------------------------------------------------- HDF5 weights

def _hdf5_layers(net, path, who, expected):
    """Check Caffe's HDF5 weights (``Net::CopyTrainedLayersFromHDF5``); return the layers they hold."""
    import h5py
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{who} is not a readable HDF5 file ({error}); give the weights the training wrote") from None
    with handle:
        if "data" not in handle or not isinstance(handle["data"], h5py.Group):
            raise ValueError(f"{who} has no group 'data', so it is not Caffe's HDF5 weights (it has: "
                             f"{_names(handle) or 'nothing'}); give the weights the training wrote")
        group = handle["data"]
        net_layers = list(net._layer_names)
        owners = _shared_blobs(net)
        for name in group:
            if name not in net_layers:
                continue
            want = expected.get(name, [])
            layer = group[name]
            if not isinstance(layer, h5py.Group) or len(layer) > len(want):
                have = len(layer) if isinstance(layer, h5py.Group) else "not a group of"
                raise ValueError(f"{who} does not fit the net: layer {name!r} has {have} parameter blob(s) in the "
                                 f"weights but the net's has {len(want)} ({_shapes(want)}); give the weights "
                                 f"trained with this prototxt")
            for j, shape in enumerate(want):
                if str(j) not in layer:
                    if (name, j) in owners:
                        continue                   # shared with an earlier layer, saved there
                    raise ValueError(f"{who} does not fit the net: layer {name!r} has no parameter {j} in the "
                                     f"weights (the net's are {_shapes(want)}); give the weights trained with "
                                     f"this prototxt")
                dataset = layer[str(j)]
                if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiu":
                    raise ValueError(f"{who}: layer {name!r} parameter {j} is not a numeric data set; give the "
                                     f"weights the training wrote")
                if tuple(dataset.shape) != tuple(shape):
                    raise ValueError(f"{who} does not fit the net: layer {name!r} parameter {j} has shape "
                                     f"{tuple(dataset.shape)} in the weights but the net's is {shape}; give the "
                                     f"weights trained with this prototxt")
        return list(group)


def _shared_blobs(net):
    """``{(layer, index)}`` of parameter blobs that share memory with a blob of an earlier layer."""
    seen, shared = set(), set()
    for name, blobs in net.params.items():
        for j, blob in enumerate(blobs):
            address = blob.data.__array_interface__["data"][0] if blob.data.size else None
            if address is not None and address in seen:
                shared.add((name, j))
            seen.add(address)
    return shared

"""A user's mistakes with the `caffe-layers` tool, made through its real command line.

Each mistake must end in one line on stderr naming the option, file, key or layer, exit status 2,
and leave every input and every earlier output exactly as it was (bytes and mtime, no new file,
no stray temporary file). The expected figures of the runs that must succeed are computed here,
in float64 from the weights, independently of the tool.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import average_precision_score

from nets import input_layer

caffe = pytest.importorskip("caffe")
h5py = pytest.importorskip("h5py")
from caffe.proto import caffe_pb2  # noqa: E402

CLI = [sys.executable, "-m", "caffe_layers.cli"]
FEATURES, CLASSES, SAMPLES = 8, 4, 40
FC = ('layer {{ name: "fc" type: "InnerProduct" bottom: "{bottom}" top: "score" '
      'inner_product_param {{ num_output: {out} }} }}\n')
SIGMOID = 'layer { name: "prob" type: "Sigmoid" bottom: "score" top: "prob" }\n'
SOFTMAX = 'layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }\n'
NET = ("--model", "deploy.prototxt", "--weights", "w.caffemodel")
EARLIER = b"an earlier output\n"


def snapshot(folder):
    """{relative path: (bytes, mtime_ns)} of every file under folder, hidden ones included."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def blob_proto(shape, values=None, legacy=False):
    blob = caffe_pb2.BlobProto()
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = shape
    else:
        blob.shape.dim.extend(shape)
    count = int(np.prod(shape))
    blob.data.extend(np.zeros(count) if values is None else np.ravel(values)[:count])
    return blob


def write_weights(path, layers):
    """A binary NetParameter: layers = [(name, [BlobProto, ...]), ...]."""
    param = caffe_pb2.NetParameter()
    for name, blobs in layers:
        layer = param.layer.add()
        layer.name = name
        layer.blobs.extend(blobs)
    Path(path).write_bytes(param.SerializeToString())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Deploy nets (raw scores, Sigmoid, Softmax), weights set here, data sets, and the expected
    logits computed from the weights in float64."""
    root = tmp_path_factory.mktemp("mistakes")
    rng = np.random.default_rng(7)
    weight = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32)
    bias = np.array([0.3, -0.2, 0.0, -1.0], np.float32)
    base = input_layer({"data": (1, FEATURES)}) + FC.format(bottom="data", out=CLASSES)
    (root / "deploy.prototxt").write_text(base)
    (root / "deploy_sigmoid.prototxt").write_text(base + SIGMOID)
    (root / "deploy_softmax.prototxt").write_text(base + SOFTMAX)
    caffe.set_mode_cpu()
    net = caffe.Net(str(root / "deploy.prototxt"), caffe.TEST)
    net.params["fc"][0].data[...] = weight
    net.params["fc"][1].data[...] = bias
    net.save(str(root / "w.caffemodel"))
    net.save_hdf5(str(root / "w.h5"))
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    logits = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    labels = (logits + rng.normal(scale=1.0, size=logits.shape) > 0).astype(np.float32)
    with h5py.File(root / "val.h5", "w") as f:
        f["data"], f["label"] = x, labels
    np.savez(root / "ok.npz", data=x, label=labels)
    (root / "earlier.json").write_bytes(EARLIER)
    return dict(root=root, x=x, logits=logits, labels=labels, weight=weight, bias=bias)


def run(work, *args, env=None):
    return subprocess.run([*CLI, *map(str, args)], cwd=work["root"], capture_output=True, text=True, timeout=300,
                          env=env)


def refused(work, args, message, env=None):
    """Run a mistake: exit status 2, `message` in the one line on stderr, no file changed or added."""
    before = snapshot(work["root"])
    result = run(work, *args, env=env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert snapshot(work["root"]) == before, "a mistake changed or added a file"
    return result.stderr


# ---------------------------------------------------------------- 1. weights that do not fit

@pytest.fixture(scope="module")
def bad_weights(work):
    root = work["root"]
    (root / "empty.caffemodel").write_bytes(b"")
    w, b = work["weight"], work["bias"]
    write_weights(root / "renamed.caffemodel", [("input", []), ("fc_old", [blob_proto((4, 8), w), blob_proto((4,), b)])])
    write_weights(root / "wide.caffemodel", [("fc", [blob_proto((5, 8)), blob_proto((5,))])])
    write_weights(root / "legacy_wrong.caffemodel", [("fc", [blob_proto((1, 1, 5, 8), legacy=True),
                                                             blob_proto((1, 1, 1, 5), legacy=True)])])
    # (4, 8, 1, 1) holds 32 values, as (4, 8) does, but Caffe's legacy rule reads the shape from its end
    write_weights(root / "legacy_transposed.caffemodel", [("fc", [blob_proto((4, 8, 1, 1), w, legacy=True),
                                                                  blob_proto((1, 1, 1, 4), b, legacy=True)])])
    write_weights(root / "legacy_ok.caffemodel", [("fc", [blob_proto((1, 1, 4, 8), w, legacy=True),
                                                          blob_proto((1, 1, 1, 4), b, legacy=True)])])
    write_weights(root / "one_blob.caffemodel", [("fc", [blob_proto((4, 8), w)])])
    truncated = blob_proto((4, 8), w)
    del truncated.data[20:]
    write_weights(root / "truncated.caffemodel", [("fc", [truncated, blob_proto((4,), b)])])
    with h5py.File(root / "wide.h5", "w") as f:
        f["data/fc/0"], f["data/fc/1"] = np.zeros((5, 8), np.float32), np.zeros(5, np.float32)
    nan_bias = b.copy()
    nan_bias[2] = np.nan
    write_weights(root / "nan.caffemodel", [("fc", [blob_proto((4, 8), w), blob_proto((4,), nan_bias)])])
    return root


WEIGHT_MISTAKES = [
    ("empty.caffemodel", "--weights 'empty.caffemodel' is empty (0 bytes)"),
    ("renamed.caffemodel", "--weights 'renamed.caffemodel' does not fit the net: its layer 'fc' (parameters "
                           "(4, 8), (4,)) is not in the weights (they hold 'input', 'fc_old'"),
    ("wide.caffemodel", "--weights 'wide.caffemodel' does not fit the net: layer 'fc' parameter 0 has shape (5, 8) "
                        "in the weights but the net's is (4, 8)"),
    ("legacy_wrong.caffemodel", "--weights 'legacy_wrong.caffemodel' does not fit the net: layer 'fc' parameter 0 "
                                "has shape (1, 1, 5, 8) (legacy num, channels, height, width) in the weights but "
                                "the net's is (4, 8)"),
    ("legacy_transposed.caffemodel", "--weights 'legacy_transposed.caffemodel' does not fit the net: layer 'fc' "
                                     "parameter 0 has shape (4, 8, 1, 1) (legacy num, channels, height, width) in "
                                     "the weights but the net's is (4, 8)"),
    ("one_blob.caffemodel", "--weights 'one_blob.caffemodel' does not fit the net: layer 'fc' has 1 parameter "
                            "blob(s) in the weights ((4, 8)) but the net's has 2"),
    ("truncated.caffemodel", "--weights 'truncated.caffemodel' is truncated or corrupt: layer 'fc' parameter 0 of "
                             "shape (4, 8) holds 20 values instead of 32"),
    ("wide.h5", "--weights 'wide.h5' does not fit the net: layer 'fc' parameter 0 has shape (5, 8) in the weights "
                "but the net's is (4, 8)"),
    ("deploy.prototxt", "--weights 'deploy.prototxt' is not a Caffe model"),
]


EVERY_COMMAND = ("empty.caffemodel", "renamed.caffemodel", "wide.caffemodel", "legacy_transposed.caffemodel")
WEIGHT_CASES = [("evaluate", w, m) for w, m in WEIGHT_MISTAKES] + \
    [(c, w, m) for c in ("calibrate", "predict") for w, m in WEIGHT_MISTAKES if w in EVERY_COMMAND]


@pytest.mark.parametrize("command, weights, message", WEIGHT_CASES, ids=[f"{c}-{w}" for c, w, _ in WEIGHT_CASES])
def test_weights_that_do_not_fit_are_refused(work, bad_weights, command, weights, message):
    output = () if command == "evaluate" else ("-o", "earlier.json")
    refused(work, [command, "--model", "deploy.prototxt", "--weights", weights, "--data", "val.h5", *output],
            f"caffe-layers {command}: error: {message}")


@pytest.mark.parametrize("weights", ["wide.caffemodel", "legacy_transposed.caffemodel", "truncated.caffemodel"])
def test_caffe_itself_aborts_on_these_weights(work, bad_weights, weights):
    """The mistake is real: pycaffe's copy_from ends the process (SIGABRT) without the tool's check."""
    code = (f"import caffe; net = caffe.Net('deploy.prototxt', caffe.TEST); net.copy_from({weights!r})")
    result = subprocess.run([sys.executable, "-c", code], cwd=work["root"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode in (-6, 134), result.returncode


def test_caffe_itself_silently_skips_a_missing_layer(work, bad_weights):
    """The worst case: Caffe copies nothing from renamed weights and reports success."""
    code = ("import caffe; net = caffe.Net('deploy.prototxt', caffe.TEST); net.copy_from('renamed.caffemodel'); "
            "print(abs(net.params['fc'][1].data).max())")
    result = subprocess.run([sys.executable, "-c", code], cwd=work["root"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and float(result.stdout) == 0.0   # the bias kept its initial zeros


@pytest.mark.parametrize("weights", ["w.caffemodel", "w.h5", "legacy_ok.caffemodel"])
def test_weights_that_fit_are_used(work, bad_weights, weights, tmp_path):
    """Caffe's own files, HDF5 weights and legacy 4-D blobs in the right layout all load, with their values."""
    out = tmp_path / "pred.jsonl"
    result = run(work, "predict", "--model", "deploy.prototxt", "--weights", weights, "--data", "val.h5",
                 "--threshold", "0.5", "-o", out)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    p = expit(work["logits"])
    assert [sorted(r["labels"]) for r in rows] == [np.flatnonzero(row >= 0.5).tolist() for row in p]
    np.testing.assert_allclose([max(r["scores"], default=0) for r in rows],
                               [row[row >= 0.5].max(initial=0) for row in p], atol=1e-5)


def test_non_finite_scores_from_the_weights_are_refused(work, bad_weights):
    refused(work, ["evaluate", "--model", "deploy.prototxt", "--weights", "nan.caffemodel", "--data", "val.h5"],
            "caffe-layers evaluate: error: the net's output 'score' is not finite (nan) for sample 0, class 2 "
            f"({SAMPLES} samples affected)")


# ---------------------------------------------------------------- 2. probabilities squashed twice

@pytest.mark.parametrize("model, kind", [("deploy_sigmoid.prototxt", "Sigmoid"), ("deploy_softmax.prototxt", "Softmax")])
def test_probabilities_are_not_squashed_again(work, model, kind, tmp_path):
    out = tmp_path / "pred.jsonl"
    result = run(work, "predict", "--model", model, "--weights", "w.caffemodel", "--data", "val.h5",
                 "--threshold", "0.3", "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"caffe-layers predict: note: the output blob 'prob' is made by the {kind} layer "
                             f"'prob': its scores are probabilities already, so --activation is none\n")
    p = expit(work["logits"]) if kind == "Sigmoid" else scipy_softmax(work["logits"], axis=1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sorted(r["labels"]) for r in rows] == [np.flatnonzero(row >= 0.3).tolist() for row in p]


def test_evaluate_on_a_softmax_net_reports_the_softmax_figures(work):
    result = run(work, "evaluate", "--model", "deploy_softmax.prototxt", "--weights", "w.caffemodel",
                 "--data", "val.h5", "--plot", "")
    assert result.returncode == 0, result.stderr
    p = scipy_softmax(work["logits"], axis=1)
    ap = average_precision_score(work["labels"], p, average=None)
    line = next(s for s in result.stdout.splitlines() if s.startswith("mAP "))
    assert float(line.split()[1]) == pytest.approx(ap.mean(), abs=1e-4)


@pytest.mark.parametrize("model, activation, kind", [("deploy_sigmoid.prototxt", "sigmoid", "Sigmoid"),
                                                     ("deploy_sigmoid.prototxt", "softmax", "Sigmoid"),
                                                     ("deploy_softmax.prototxt", "softmax", "Softmax")])
@pytest.mark.parametrize("command", ["evaluate", "calibrate", "predict"])
def test_an_explicit_second_squashing_is_an_error(work, model, activation, kind, command):
    output = () if command == "evaluate" else ("-o", "earlier.json")
    refused(work, [command, "--model", model, "--weights", "w.caffemodel", "--data", "val.h5",
                   "--activation", activation, *output],
            f"caffe-layers {command}: error: --activation {activation}: the output blob 'prob' is made by the {kind} "
            f"layer 'prob', so it already holds probabilities and would be squashed twice")


def test_raw_scores_before_the_squashing_layer_still_get_the_default_sigmoid(work, tmp_path):
    out = tmp_path / "pred.jsonl"
    result = run(work, "predict", "--model", "deploy_sigmoid.prototxt", "--weights", "w.caffemodel",
                 "--data", "val.h5", "--output-blob", "score", "-o", out)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sorted(r["labels"]) for r in rows] == [np.flatnonzero(row >= 0.5).tolist() for row in
                                                   expit(work["logits"])]


def test_help_says_what_is_detected(work):
    result = run(work, "predict", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Default: none when the output blob is made by a Sigmoid or Softmax layer" in text
    assert "sigmoid or softmax on such a blob is an error" in text


# ---------------------------------------------------------------- 7. outputs over inputs

def test_outputs_never_overwrite_inputs(work, tmp_path):
    os.symlink(work["root"] / "ok.npz", tmp_path / "link.npz")
    (tmp_path / "t.json").write_text(json.dumps({"thresholds": [0.5] * CLASSES}))
    cases = [
        (["predict", *NET, "--data", "ok.npz", "-o", "ok.npz"],
         "caffe-layers predict: error: -o 'ok.npz' is the same file as --data 'ok.npz': writing it would destroy "
         "that input; choose another -o path"),
        (["predict", *NET, "--data", "ok.npz", "--thresholds", tmp_path / "t.json", "-o", tmp_path / "t.json"],
         f"-o '{tmp_path / 't.json'}' is the same file as --thresholds '{tmp_path / 't.json'}'"),
        (["predict", *NET, "--data", "ok.npz", "-o", tmp_path / "link.npz"],     # the same file under another name
         f"-o '{tmp_path / 'link.npz'}' is the same file as --data 'ok.npz'"),
        (["calibrate", *NET, "--data", "val.h5", "-o", "w.caffemodel"],
         "-o 'w.caffemodel' is the same file as --weights 'w.caffemodel'"),
        (["evaluate", *NET, "--data", "val.h5", "--plot", "./val.h5"],
         "--plot './val.h5' is the same file as --data 'val.h5'"),
        (["class-weights", "--data", "val.h5", "-o", "val.h5"], "-o 'val.h5' is the same file as --data 'val.h5'"),
        (["predict", *NET, "--data", "ok.npz", "-o", tmp_path],
         f"-o '{tmp_path}' is a folder; give a file name"),
        (["predict", *NET, "--data", "ok.npz", "-o", tmp_path / "no" / "p.jsonl"],
         f"the folder '{tmp_path / 'no'}' does not exist"),
    ]
    for args, message in cases:
        before = snapshot(tmp_path)
        refused(work, args, message)
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command, args, name", [
    ("predict", ("--data", "ok.npz"), "p.jsonl"),
    ("calibrate", ("--data", "val.h5"), "t.json"),
    ("class-weights", ("--data", "val.h5"), "cw.json"),
    ("evaluate", ("--data", "val.h5"), "pr.png"),
])
def test_outputs_are_replaced_whole_by_a_rename(work, tmp_path, command, args, name):
    """An earlier output is replaced by a new file (new inode) and no temporary file is left."""
    target = tmp_path / name
    target.write_bytes(EARLIER)
    inode = target.stat().st_ino
    option = "--plot" if command == "evaluate" else "-o"
    net = () if command == "class-weights" else NET
    result = run(work, command, *net, *args, option, target)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() != EARLIER and target.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    if name.endswith(".png"):
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    from caffe_layers.files import atomic_output
    target = tmp_path / "out.json"
    target.write_bytes(EARLIER)
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temp:
            Path(temp).write_text("half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == EARLIER and [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ---------------------------------------------------------------- 9. aborts and bad data

@pytest.fixture(scope="module")
def bad_nets(work):
    root = work["root"]
    inp = input_layer({"data": (1, FEATURES)})
    (root / "bottom.prototxt").write_text(inp + FC.format(bottom="dat", out=CLASSES))
    (root / "type.prototxt").write_text(inp + FC.format(bottom="data", out=CLASSES).replace("InnerProduct",
                                                                                          "InnerProdukt"))
    (root / "reshape.prototxt").write_text(
        inp + 'layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 1 dim: 8 } } }\n'
        + FC.format(bottom="r", out=CLASSES))
    (root / "pymodule.prototxt").write_text(
        inp + FC.format(bottom="data", out=CLASSES) +
        'layer { name: "p" type: "Python" bottom: "score" top: "p" python_param { module: "no_such_module" '
        'layer: "X" } }\n')
    (root / "two_inputs.prototxt").write_text(input_layer({"data": (1, FEATURES), "extra": (1, 2)}) +
                                              FC.format(bottom="data", out=CLASSES))
    x, y = work["x"], work["labels"]
    with h5py.File(root / "scalar.h5", "w") as f:
        f["data"], f["label"] = np.float32(3.0), y
    nan_x = x.copy()
    nan_x[17, 3] = np.nan
    with h5py.File(root / "nan.h5", "w") as f:
        f["data"], f["label"] = nan_x, y
    np.savez(root / "nan.npz", data=nan_x, label=y)
    nan_y = y.copy()
    nan_y[5, 1] = np.nan
    with h5py.File(root / "nan_label.h5", "w") as f:
        f["data"], f["label"] = x, nan_y
    with h5py.File(root / "text.h5", "w") as f:
        f["data"], f["label"] = np.array([b"a"] * SAMPLES), y
    (root / "folder").mkdir()
    return root


NET_MISTAKES = [
    ("bottom.prototxt", "--model 'bottom.prototxt': layer 'fc' takes bottom 'dat', which no earlier layer makes "
                        "(blobs so far: 'data')"),
    ("type.prototxt", "--model 'type.prototxt': layer 'fc' has type 'InnerProdukt', which this Caffe does not know; "
                      "did you mean 'InnerProduct'?"),
    ("reshape.prototxt", "--model 'reshape.prototxt': Caffe cannot run this net on a batch of shape (40, 8): "
                         "Check failed: top[0]->count() == bottom[0]->count() (8 vs. 320)"),
    ("pymodule.prototxt", "--model 'pymodule.prototxt': Python layer 'p' names python_param module "
                          "'no_such_module', which cannot be imported here"),
    ("two_inputs.prototxt", "--model 'two_inputs.prototxt' has 2 inputs (data, extra); the tool feeds one"),
]


@pytest.mark.parametrize("model, message", NET_MISTAKES, ids=[m for m, _ in NET_MISTAKES])
def test_nets_caffe_would_abort_on_are_one_line(work, bad_nets, model, message):
    refused(work, ["evaluate", "--model", model, "--weights", "w.caffemodel", "--data", "val.h5"],
            f"caffe-layers evaluate: error: {message}")


@pytest.mark.parametrize("model", ["bottom.prototxt", "type.prototxt"])
def test_caffe_itself_aborts_on_these_nets(work, bad_nets, model):
    code = f"import caffe; caffe.Net({model!r}, caffe.TEST)"
    result = subprocess.run([sys.executable, "-c", code], cwd=work["root"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode in (-6, 134), result.returncode


DATA_MISTAKES = [
    ("scalar.h5", "data file 'scalar.h5': 'data' is a scalar (shape ()), expected (N, ...) inputs"),
    ("nan.h5", "data file 'nan.h5': 'data' holds a non-finite value (nan) in sample 17"),
    ("nan.npz", "data file 'nan.npz': 'data' holds a non-finite value (nan) in sample 17"),
    ("nan_label.h5", "data file 'nan_label.h5': 'label': labels must be 0 or 1; 1 are not, the first at index (5, 1): nan"),
    ("text.h5", "data file 'text.h5': 'data' holds |S1 values, expected numbers"),
    ("folder", "data file 'folder' is a folder, not a file"),
]


@pytest.mark.parametrize("data, message", DATA_MISTAKES, ids=[d for d, _ in DATA_MISTAKES])
def test_bad_data_is_one_line(work, bad_nets, data, message):
    refused(work, ["calibrate", *NET, "--data", data, "-o", "earlier.json"], f"caffe-layers calibrate: error: {message}")


# ---------------------------------------------------------------- 10. missing dependencies

BLOCKER = '''
import os, sys
BLOCKED = set(os.environ["BLOCK_MODULES"].split(","))
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
'''


def without(tmp_path, *modules):
    """An environment whose Python cannot import `modules` (a sitecustomize on PYTHONPATH)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join([str(shim), str(Path(__file__).resolve().parent.parent)])
    return dict(os.environ, PYTHONPATH=path, BLOCK_MODULES=",".join(modules))


def test_the_blocker_works(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import caffe"], env=without(tmp_path, "caffe"),
                            capture_output=True, text=True)
    assert result.returncode == 1 and "No module named 'caffe'" in result.stderr


@pytest.mark.parametrize("args, blocked, message", [
    (["evaluate", *NET, "--data", "val.h5"], ["caffe"],
     "caffe-layers evaluate: error: pycaffe is not importable (No module named 'caffe'); run `make setup` in the "
     "caffe-layers checkout (it builds Caffe into .venv), or put an existing build's python folder on the path: "
     "PYTHONPATH=/path/to/caffe/python"),
    (["class-weights", "--data", "val.h5"], ["h5py"],
     "caffe-layers class-weights: error: this command needs the tools extra, and h5py is not installed "
     "(No module named 'h5py'); pip install scikit-learn matplotlib tqdm h5py (the package's 'tools' extra; from a clone: pip install '.[tools]')"),
    (["evaluate", *NET, "--data", "ok.npz", "--plot", ""], ["sklearn"],
     "and scikit-learn is not installed (No module named 'sklearn'); pip install scikit-learn matplotlib tqdm h5py (the package's 'tools' extra; from a clone: pip install '.[tools]')"),
    (["evaluate", *NET, "--data", "ok.npz"], ["matplotlib"],
     "and matplotlib is not installed (No module named 'matplotlib'); pip install scikit-learn matplotlib tqdm h5py (the package's 'tools' extra; from a clone: pip install '.[tools]')"),
])
def test_missing_dependencies_name_the_fix(work, tmp_path, args, blocked, message):
    refused(work, args, message, env=without(tmp_path, *blocked))


def test_help_needs_neither_caffe_nor_the_tools(work, tmp_path):
    result = run(work, "--help", env=without(tmp_path, "caffe", "h5py", "sklearn", "matplotlib", "tqdm"))
    assert result.returncode == 0 and "class-weights" in result.stdout, result.stderr


# ---------------------------------------------------------------- 12. options

OPTION_MISTAKES = [
    (["predict", *NET, "--data", "ok.npz", "--threshold", "nan"],
     "caffe-layers predict: error: argument --threshold: expected a finite number, got 'nan'"),
    (["evaluate", *NET, "--data", "ok.npz", "--threshold", "inf"], "expected a finite number, got 'inf'"),
    (["calibrate", *NET, "--data", "val.h5", "--default", "nan", "-o", "earlier.json"],
     "caffe-layers calibrate: error: argument --default: expected a finite number, got 'nan'"),
    (["predict", *NET, "--data", "ok.npz", "--batch-size", "0"], "caffe-layers predict: error: --batch-size must be >= 1 (got 0)"),
    (["predict", *NET, "--data", "ok.npz", "--threshold", "0.3", "--top-k", "2"],
     "caffe-layers predict: error: give one of --thresholds, --threshold, --top-k, --mass (got --threshold, --top-k)"),
    (["evaluate", *NET, "--data", "ok.npz", "--threshold", "0.3", "--thresholds", "earlier.json"],
     "give one of --thresholds, --threshold, --top-k, --mass (got --thresholds, --threshold)"),
    (["predict", *NET, "--data", "ok.npz", "--min-count", "2"],
     "caffe-layers predict: error: --min-count works only with --mass"),
    (["predict", *NET, "--data", "ok.npz", "--top-k", "1", "--max-count", "2"], "--max-count works only with --mass"),
    (["calibrate", *NET, "--data", "val.h5", "--target-precision", "0.9", "-o", "earlier.json"],
     "caffe-layers calibrate: error: --target-precision works only with --method precision (got --method f1)"),
    (["calibrate", *NET, "--data", "val.h5", "--method", "precision", "--target-precision", "1.5"],
     "--target-precision must be in (0, 1] (got 1.5)"),
    (["class-weights", "--data", "val.h5", "--beta", "0.9", "-o", "earlier.json"],
     "caffe-layers class-weights: error: --beta works only with --method effective_number"),
    (["evaluate", *NET, "--data", "val.h5", "--ignore-label", "0"],
     "--ignore-label 0 would leave out every negative label"),
    (["predict", *NET, "--data", "ok.npz", "--threshold", "1.5"],
     "caffe-layers predict: error: --threshold 1.5: the scores are probabilities (after --activation sigmoid), "
     "so a threshold outside [0, 1] predicts nothing"),
    (["calibrate", "--model", "deploy_sigmoid.prototxt", "--weights", "w.caffemodel", "--data", "val.h5",
      "--default", "-0.5", "-o", "earlier.json"],
     "caffe-layers calibrate: error: --default -0.5: the scores are probabilities (made by the Sigmoid layer "
     "'prob'), so a threshold outside [0, 1] predicts every class"),
    (["predict", *NET, "--data", "ok.npz", "--top-k", "5"],
     "--top-k 5: the net's output 'score' has only 4 classes"),
    (["predict", *NET, "--data", "ok.npz", "--mass", "0.9"],
     "--mass needs probabilities that sum to 1 for each sample, but sample 0's sum to"),
    (["predict", *NET, "--data", "ok.npz", "--format", "jsonl", "-o", "p.csv"],
     "--format jsonl contradicts -o 'p.csv', a .csv name"),
    (["predict", *NET, "--data", "ok.npz", "--data-key", "label"],
     "--data-key and --label-key both name 'label'"),
]


@pytest.mark.parametrize("args, message", OPTION_MISTAKES, ids=[m[:50] for _, m in OPTION_MISTAKES])
def test_option_mistakes_are_usage_errors(work, args, message):
    refused(work, args, message)


def test_classes_that_contradict_the_thresholds_file(work, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"thresholds": [0.5] * 4, "classes": ["a", "b", "c", "d"]}))
    (tmp_path / "names.txt").write_text("a\nb\nd\nc\n")
    (tmp_path / "twice.txt").write_text("a\nb\na\nc\n")
    refused(work, ["evaluate", *NET, "--data", "val.h5", "--thresholds", tmp_path / "t.json",
                   "--classes", tmp_path / "names.txt"],
            f"--classes '{tmp_path / 'names.txt'}' and --thresholds '{tmp_path / 't.json'}' disagree on class 2 "
            f"('d' vs 'c')")
    refused(work, ["predict", *NET, "--data", "ok.npz", "--classes", tmp_path / "twice.txt"],
            f"--classes '{tmp_path / 'twice.txt'}' names 'a' 2 times")


def test_calibrate_never_writes_a_file_it_would_refuse(work, tmp_path):
    """calibrate --default is checked like every threshold: within [0, 1] for probabilities."""
    refused(work, ["calibrate", *NET, "--data", "val.h5", "--default", "2", "-o", tmp_path / "t.json"],
            "--default 2: the scores are probabilities (after --activation sigmoid)")
    assert not (tmp_path / "t.json").exists()


def test_csv_class_names_with_the_delimiter_round_trip(work, tmp_path):
    names = ["cat;dog", 'say "hi"', "a,b", "plain"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "p.csv"
    result = run(work, "predict", *NET, "--data", "ok.npz", "--classes", tmp_path / "names.txt",
                 "--threshold", "0.3", "-o", out)
    assert result.returncode == 0, result.stderr
    p = expit(work["logits"])
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == SAMPLES
    for i, row in enumerate(rows):
        labels = next(csv.reader([row["labels"]], delimiter=";"), [])
        scores = [float(s) for s in next(csv.reader([row["scores"]], delimiter=";"), [])]
        chosen = sorted(np.flatnonzero(p[i] >= 0.3), key=lambda c: -p[i, c])
        assert int(row["index"]) == i
        assert labels == [names[c] for c in chosen]
        np.testing.assert_allclose(scores, p[i, chosen], atol=1e-6)


def test_check_weights_allows_the_named_new_layers_of_a_fine_tuned_net(work, bad_weights):
    from caffe_layers.caffemodel import check_weights
    net = caffe.Net(str(work["root"] / "deploy.prototxt"), caffe.TEST)
    with pytest.raises(ValueError, match="its layer 'fc' .* is not in the weights"):
        check_weights(net, str(work["root"] / "renamed.caffemodel"), "weights")
    assert check_weights(net, str(work["root"] / "renamed.caffemodel"), "weights",
                         allow_missing=("fc",)) == ["input", "fc_old"]


def test_hdf5_weights_leave_out_shared_parameters_as_caffe_does(tmp_path):
    """Caffe's HDF5 weights save a shared blob once, with its owner; both layers still load."""
    from caffe_layers.caffemodel import check_weights
    shared = ('layer {{ name: "{name}" type: "InnerProduct" bottom: "data" top: "{name}" '
              'param {{ name: "w" }} param {{ name: "b" }} inner_product_param {{ num_output: 3 '
              'weight_filler {{ type: "gaussian" std: 1 }} }} }}\n')
    path = tmp_path / "shared.prototxt"
    path.write_text(input_layer({"data": (2, 5)}) + shared.format(name="a") + shared.format(name="b"))
    net = caffe.Net(str(path), caffe.TEST)
    net.save_hdf5(str(tmp_path / "shared.h5"))
    with h5py.File(tmp_path / "shared.h5", "r") as f:
        assert sorted(f["data/a"]) == ["0", "1"] and sorted(f["data/b"]) == []
    check_weights(net, str(tmp_path / "shared.h5"))
    fresh = caffe.Net(str(path), caffe.TEST)
    fresh.copy_from(str(tmp_path / "shared.h5"))
    np.testing.assert_array_equal(fresh.params["b"][0].data, net.params["a"][0].data)

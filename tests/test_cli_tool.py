"""The `caffe-layers` command on a tiny net trained here: each subcommand end to end, and bad
input as one-line errors with exit status 2."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import average_precision_score, f1_score

from conftest import write_h5
from nets import input_layer

caffe = pytest.importorskip("caffe")
h5py = pytest.importorskip("h5py")

CLI = Path(sys.executable).parent / "caffe-layers"   # the console script `pip install -e .` writes
FEATURES, CLASSES = 8, 4
FC = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "score" '
      'inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.01 } } }\n')


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A linear 8 -> 4 multi-label net trained 50 iterations on separable data, and its data sets."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    true_w = rng.normal(size=(FEATURES, CLASSES))
    bias = np.array([0.0, 0.5, -0.5, -1.5])                      # class 3 is rare

    def sample(n):
        x = rng.normal(size=(n, FEATURES))
        return x, (x @ true_w + bias > 0).astype(np.float32)

    sets = {name: sample(n) for name, n in (("train", 512), ("val", 200), ("test", 150))}
    write_h5(root / "train.h5", *sets["train"])
    write_h5(root / "val.h5", *sets["val"])
    np.savez(root / "test.npz", data=sets["test"][0].astype(np.float32), label=sets["test"][1])
    (root / "train.txt").write_text(f"{root / 'train.h5'}\n")
    (root / "train.prototxt").write_text(
        f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" '
        f'hdf5_data_param {{ source: "{root / "train.txt"}" batch_size: 64 }} }}\n' + FC +
        'layer { name: "loss" type: "Python" bottom: "score" bottom: "label" top: "loss" loss_weight: 1\n'
        '  python_param { module: "caffe_layers" layer: "SigmoidFocalLoss" param_str: \'{"gamma": 0}\' } }\n')
    (root / "solver.prototxt").write_text(
        f'net: "{root / "train.prototxt"}" base_lr: 0.5 momentum: 0.9 lr_policy: "fixed" max_iter: 50 '
        f'display: 0 solver_mode: CPU snapshot_after_train: false random_seed: 1\n')
    caffe.set_mode_cpu()
    solver = caffe.get_solver(str(root / "solver.prototxt"))
    solver.step(50)
    solver.net.save(str(root / "tiny.caffemodel"))
    (root / "deploy.prototxt").write_text(input_layer({"data": (1, FEATURES)}) + FC)
    weight, b = (p.data.astype(np.float64) for p in solver.net.params["fc"])
    # the net's scores, computed here from its weights, independently of the tool
    logits = {name: x.astype(np.float32) @ weight.T + b for name, (x, _) in sets.items()}
    return dict(root=root, sets=sets, logits=logits, probs={k: expit(v) for k, v in logits.items()})


def cli(tiny, *args):
    return subprocess.run([str(CLI), *map(str, args)], cwd=tiny["root"], capture_output=True, text=True,
                          timeout=300)


NET = ("--model", "deploy.prototxt", "--weights", "tiny.caffemodel")


@pytest.mark.parametrize("command, option", [("calibrate", "--target-precision"), ("evaluate", "--plot"),
                                             ("predict", "--mass"), ("class-weights", "--beta")])
def test_help(tiny, command, option):
    result = cli(tiny, command, "--help")
    assert result.returncode == 0 and option in result.stdout


def test_calibrate_then_evaluate_with_the_thresholds(tiny):
    result = cli(tiny, "calibrate", *NET, "--data", "val.h5", "-o", "thresholds.json")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tiny["root"] / "thresholds.json").read_text())
    assert saved["method"] == "f1" and len(saved["thresholds"]) == CLASSES
    _, y = tiny["sets"]["val"]
    p = tiny["probs"]["val"]
    calibrated = f1_score(y, p >= np.array(saved["thresholds"]), average="macro")
    # a threshold equals one of the tool's float32 scores: ours may differ in the last bits
    assert calibrated >= f1_score(y, p >= 0.5, average="macro") - 0.02
    macro_f1 = {}
    for decision in (("--threshold", "0.5"), ("--thresholds", "thresholds.json")):
        result = cli(tiny, "evaluate", *NET, "--data", "val.h5", *decision, "--plot", "")
        assert result.returncode == 0, result.stderr
        macro_f1[decision[0]] = float(re.search(r"^macro\s+\S+\s+(\S+)", result.stdout, re.M).group(1))
    assert macro_f1["--thresholds"] >= macro_f1["--threshold"]          # chosen on this very set
    assert macro_f1["--thresholds"] == pytest.approx(calibrated, abs=0.02)


def test_evaluate_prints_sklearn_figures_and_writes_a_plot(tiny):
    result = cli(tiny, "evaluate", *NET, "--data", "test.npz", "--plot", "pr.png")
    assert result.returncode == 0, result.stderr
    _, y = tiny["sets"]["test"]
    p = tiny["probs"]["test"]
    ap = average_precision_score(y, p, average=None)
    mean_ap = re.search(r"^mAP (\S+) over 4 classes", result.stdout, re.M).group(1)
    assert float(mean_ap) == pytest.approx(ap.mean(), abs=1e-4)
    for c in range(CLASSES):
        row = re.search(rf"^{c}\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s+(\d+)$", result.stdout, re.M)
        assert float(row.group(1)) == pytest.approx(ap[c], abs=1e-3)
        assert float(row.group(2)) == pytest.approx(f1_score(y[:, c], p[:, c] >= 0.5), abs=1e-3)
        assert int(row.group(3)) == y[:, c].sum()
    assert (tiny["root"] / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_writes_json_lines_and_csv(tiny):
    result = cli(tiny, "predict", *NET, "--data", "test.npz", "-o", "pred.jsonl", "--threshold", "0.4")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tiny["root"] / "pred.jsonl").read_text().splitlines()]
    p = tiny["probs"]["test"]
    assert [line["index"] for line in lines] == list(range(len(p)))
    assert [sorted(line["labels"]) for line in lines] == [np.flatnonzero(row >= 0.4).tolist() for row in p]
    assert all(line["scores"] == sorted(line["scores"], reverse=True) for line in lines)
    result = cli(tiny, "predict", *NET, "--data", "test.npz", "-o", "pred.csv", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tiny["root"] / "pred.csv").open()))
    assert [r["labels"] for r in rows] == [f"{a};{b}" for a, b in np.argsort(-p, axis=1)[:, :2]]


def test_predict_by_cumulative_mass_with_softmax(tiny):
    result = cli(tiny, "predict", *NET, "--data", "val.h5", "--activation", "softmax", "--mass", "0.9",
                 "--max-count", "2", "-o", "mass.jsonl")
    assert result.returncode == 0, result.stderr
    probs = scipy_softmax(tiny["logits"]["val"], axis=1)
    rows = [json.loads(line) for line in (tiny["root"] / "mass.jsonl").read_text().splitlines()]
    assert len(rows) == len(probs)
    for row, p in zip(rows, probs):
        expected, total = [], 0.0
        for c in np.argsort(-p):                  # classes, most likely first, until 0.9 or 2 of them
            if total >= 0.9 or len(expected) == 2:
                break
            expected.append(int(c))
            total += p[c]
        assert row["labels"] == expected


def test_class_weights(tiny):
    result = cli(tiny, "class-weights", "--data", "train.h5", "-o", "cw.json")
    assert result.returncode == 0, result.stderr
    counts = tiny["sets"]["train"][1].sum(axis=0)
    expected = (1 / counts) / np.mean(1 / counts)
    np.testing.assert_allclose(json.loads((tiny["root"] / "cw.json").read_text()), expected, rtol=1e-6)
    result = cli(tiny, "class-weights", "--data", "train.h5", "--kind", "alpha", "-o", "alpha.json")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(json.loads((tiny["root"] / "alpha.json").read_text()), 1 - counts / 512, rtol=1e-6)


@pytest.fixture(scope="session")
def bad_files(tiny):
    root = tiny["root"]
    x, y = tiny["sets"]["val"]
    (root / "three.json").write_text(json.dumps({"thresholds": [0.5, 0.5, 0.5]}))
    write_h5(root / "wide.h5", np.zeros((10, 7)), np.zeros((10, CLASSES)))
    write_h5(root / "empty.h5", np.zeros((0, FEATURES)), np.zeros((0, CLASSES)))
    write_h5(root / "five.h5", x, np.zeros((len(x), 5)))
    write_h5(root / "absent.h5", x, np.column_stack([y[:, :3], np.zeros(len(y))]))
    (root / "broken.prototxt").write_text("layer { name: \"fc\" type: InnerProduct\n")
    deploy = (root / "deploy.prototxt").read_text()
    (root / "deploy5.prototxt").write_text(deploy.replace("num_output: 4", "num_output: 5"))
    (root / "garbage.caffemodel").write_bytes(b"\xff" * 64)
    return root


BAD = [
    (("evaluate", "--model", "deploy.prototxt", "--weights", "nope.caffemodel", "--data", "val.h5"),
     "caffe-layers evaluate: error: --weights 'nope.caffemodel' does not exist"),
    (("evaluate", *NET, "--data", "val.h5", "--thresholds", "three.json"),
     "caffe-layers evaluate: error: --thresholds file 'three.json' has 3 thresholds but the net's output "
     "'score' has 4 classes"),
    (("predict", *NET, "--data", "val.h5", "--thresholds", "three.json"),
     "caffe-layers predict: error: --thresholds file 'three.json' has 3 thresholds"),
    (("evaluate", *NET, "--data", "wide.h5"),
     "caffe-layers evaluate: error: data file 'wide.h5': 'data' has samples of shape (7,) but the net's input "
     "'data' takes (8,)"),
    (("calibrate", *NET, "--data", "empty.h5"),
     "caffe-layers calibrate: error: data file 'empty.h5' is empty: 'data' has 0 samples"),
    (("evaluate", *NET, "--data", "five.h5"),
     "caffe-layers evaluate: error: data file 'five.h5': 'label' has 5 classes but the net's output 'score' has 4"),
    (("evaluate", *NET, "--data", "missing.h5"),
     "caffe-layers evaluate: error: data file 'missing.h5' does not exist"),
    (("evaluate", *NET, "--data", "val.h5", "--label-key", "labels"),
     "caffe-layers evaluate: error: data file 'val.h5' has no 'labels' (it has: data, label); set --label-key"),
    (("evaluate", "--model", "broken.prototxt", "--weights", "tiny.caffemodel", "--data", "val.h5"),
     "caffe-layers evaluate: error: --model 'broken.prototxt' is not a valid net prototxt"),
    (("evaluate", "--model", "deploy5.prototxt", "--weights", "tiny.caffemodel", "--data", "val.h5"),
     "caffe-layers evaluate: error: --weights 'tiny.caffemodel' does not fit the net: layer 'fc' parameter 0 "
     "has shape (4, 8) in the weights but the net's is (5, 8)"),
    (("evaluate", "--model", "deploy.prototxt", "--weights", "garbage.caffemodel", "--data", "val.h5"),
     "caffe-layers evaluate: error: --weights 'garbage.caffemodel' is not a Caffe model"),
    (("predict", *NET, "--data", "val.h5", "--top-k", "2", "--mass", "0.9"),
     "caffe-layers predict: error: give one of --thresholds, --threshold, --top-k, --mass (got --top-k, --mass)"),
    (("calibrate", *NET, "--data", "val.h5", "--method", "precision"),
     "caffe-layers calibrate: error: --method precision needs --target-precision P"),
    (("class-weights", "--data", "absent.h5"),
     "caffe-layers class-weights: error: classes [3] have no positives"),
    (("evaluate", *NET, "--data", "val.h5", "--gpu", "99"),
     "caffe-layers evaluate: error: --gpu 99: this Caffe cannot use GPU 99"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m.split("error: ")[1][:40] for _, m in BAD])
def test_bad_input_is_one_line_and_status_2(tiny, bad_files, args, message):
    result = cli(tiny, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


DOCS = Path(__file__).resolve().parent.parent / "docs" / "tool.md"


def doc_blocks():
    """(kind, text) of the fenced sh and console blocks of docs/tool.md after its worked example's heading."""
    text = DOCS.read_text()
    text = text[text.index("## A worked example"):]
    return re.findall(r"^```(sh|console)\n(.*?)^```", text, re.M | re.S)


def test_the_tool_reference_runs_as_printed(tmp_path):
    """Every command of docs/tool.md, in order, in an empty folder: the exit status its output
    implies (2 for an error), and its note and error lines exactly as printed."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    blocks = doc_blocks()
    assert [kind for kind, _ in blocks][:2] == ["sh", "console"] and len(blocks) >= 6
    ran = 0
    for kind, text in blocks:
        if kind == "sh":
            steps = [(text, [])]
        else:
            steps, lines = [], text.splitlines()
            for line in lines:
                if line.startswith("$ "):
                    steps.append((line[2:], []))
                else:
                    steps[-1][1].append(line)
        for command, expected in steps:
            result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=300)
            status = 2 if any(": error: " in line for line in expected) else 0
            assert result.returncode == status, (command, result.stderr)
            said = [line for line in expected if line.startswith("caffe-layers ")]
            assert said == [line for line in result.stderr.splitlines() if line.startswith("caffe-layers ")], command
            for line in expected:
                if line.startswith("wrote "):
                    assert line.split(" (")[0] in result.stdout, (command, result.stdout)
            ran += 1
    assert ran >= 30

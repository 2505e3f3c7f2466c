"""The demo end to end, shortened (examples/demo.py --quick): through examples/train.py (pycaffe) and
through `caffe train`; then resuming and stopping examples/train.py; and the bundled data."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

caffe = pytest.importorskip("caffe")
h5py = pytest.importorskip("h5py")

sys.path.insert(0, str(ROOT / "examples"))
from digits_data import DigitsSpec, NUM_CLASSES, make_digits  # noqa: E402

DEMO = ROOT / "examples" / "demo.py"
TRAIN = ROOT / "examples" / "train.py"
CAFFE_TOOL = Path(sys.executable).parent / "caffe"
VARIANTS = ("sigmoid_ce", "focal", "softmax")
QUICK_ITERS = 20


def run(*argv, timeout=300, **kwargs):
    done = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=timeout,
                          **kwargs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def pycaffe_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_pycaffe")
    return out, run(DEMO, "--quick", "--out", out, "--no-progress")


@pytest.fixture(scope="module")
def cli_demo(tmp_path_factory):
    if not CAFFE_TOOL.exists():
        pytest.skip(f"{CAFFE_TOOL} does not exist (run scripts/setup.sh)")
    out = tmp_path_factory.mktemp("demo_cli")
    return out, run(DEMO, "--quick", "--out", out, "--trainer", "cli", "--variants", "focal", "--no-progress")


def table_rows(stdout):
    """{variant: [cells]} of the printed table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in VARIANTS:
            rows[cells[0]] = cells
    return rows


def printed_map(text):
    return float(re.search(r"^mAP (\S+) over", text, re.M).group(1))


def figures_by_sklearn(out, name):
    """mAP, macro F1 and rare AP of a variant's final weights, recomputed here: the deploy net run by
    pycaffe over test.h5, scikit-learn's AP and F1 at the thresholds in thresholds.json."""
    from sklearn.metrics import average_precision_score, f1_score
    net = caffe.Net(str(out / "nets" / f"{name}_deploy.prototxt"), caffe.TEST,
                    weights=str(out / name / f"{name}_iter_{QUICK_ITERS}.caffemodel"))
    with h5py.File(out / "digits" / "test.h5", "r") as handle:
        x, labels = handle["data"][:], handle["label"][:].astype(int)
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    probs = net.forward()["prob"].astype(np.float64)
    cut = np.array(json.loads((out / name / "thresholds.json").read_text())["thresholds"])
    ap = np.array([average_precision_score(labels[:, c], probs[:, c]) for c in range(NUM_CLASSES)])
    f1 = f1_score(labels, (probs >= cut).astype(int), average=None, zero_division=0)
    assert labels.sum(axis=0).min() > 0                  # every digit has a positive: AP is defined for all
    return ap.mean(), f1.mean(), ap[list(DigitsSpec().rare_digits)].mean()


def test_pycaffe_demo_trains_scores_and_plots(pycaffe_demo):
    out, stdout = pycaffe_demo
    rows = table_rows(stdout)
    assert list(rows) == list(VARIANTS)
    assert (out / "results.md").read_text().strip() in stdout
    results = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for name in VARIANTS:
        history = json.loads((out / name / f"{name}_history.json").read_text())
        loss = history["loss"]
        assert len(loss) == QUICK_ITERS and np.mean(loss[-5:]) < np.mean(loss[:5]), (name, loss)
        assert [v["iter"] for v in history["val"]] == [10, 20]
        thresholds = json.loads((out / name / "thresholds.json").read_text())["thresholds"]
        assert len(thresholds) == NUM_CLASSES
        for produced in (f"{name}_iter_{QUICK_ITERS}.caffemodel", f"{name}_iter_{QUICK_ITERS}.solverstate",
                         f"{name}_iter_10.solverstate", f"{name}_loss.png"):
            assert (out / name / produced).stat().st_size > 0, produced
        # the table's figures, recomputed from the weights, the data and the thresholds
        m_ap, macro_f1, rare_ap = figures_by_sklearn(out, name)
        assert float(rows[name][3]) == pytest.approx(m_ap, abs=6e-5)
        assert float(rows[name][4]) == pytest.approx(macro_f1, abs=6e-5)
        assert float(rows[name][5]) == pytest.approx(rare_ap, abs=6e-5)
        assert results[name]["mAP"] == pytest.approx(m_ap, abs=1e-6)
    for plot in ("loss_curves.png", "per_class_ap.png", "precision_recall.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.rglob(".*") if p.is_file()]      # no temporary file left behind


def test_the_printed_caffe_layers_command_gives_the_table_figures(pycaffe_demo):
    out, stdout = pycaffe_demo
    lines = stdout.splitlines()
    command = lines[lines.index(next(line for line in lines if "with the caffe-layers tool:" in line)) + 1]
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert printed_map(done.stdout) == pytest.approx(float(table_rows(stdout)["softmax"][3]), abs=6e-5)
    assert (out / "softmax" / "precision_recall.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_demo_trains_the_same_net(cli_demo, pycaffe_demo):
    out, stdout = cli_demo
    assert list(table_rows(stdout)) == ["focal"]
    result = json.loads((out / "results.json").read_text())["rows"][0]
    iters, loss = result["curve"]                      # Caffe's smoothed loss, read from its log
    assert iters[-1] == QUICK_ITERS and loss[-1] < loss[0]
    assert [v["iter"] for v in result["val"]] == [10, 20] and "mAP" in result["val"][-1]
    assert (out / "precision_recall.png").exists() and (out / "per_class_ap.png").exists()
    # same solver, same seed, same data: caffe train and pycaffe give the same weights
    pycaffe = {r["variant"]: r for r in json.loads((pycaffe_demo[0] / "results.json").read_text())["rows"]}
    assert result["ap"] == pytest.approx(pycaffe["focal"]["ap"], abs=1e-6)


def test_train_cli_script_trains_the_shipped_solver(cli_demo, tmp_path):
    """examples/train_cli.sh on prototxt/ as shipped but for a 20-iteration budget, from a working
    directory holding those files and the quick demo's data under runs/digits."""
    out, _ = cli_demo
    (tmp_path / "prototxt").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits").symlink_to(out / "digits")
    for path in (ROOT / "prototxt").glob("focal_*.prototxt"):
        text = path.read_text()
        if path.name.endswith("_solver.prototxt"):
            text = re.sub(r"max_iter: \d+", "max_iter: 20", text)
            text = re.sub(r"test_interval: \d+", "test_interval: 10", text)
            text = re.sub(r"test_iter: \d+", "test_iter: 2", text)
            text = re.sub(r"snapshot: \d+", "snapshot: 10", text)
        (tmp_path / "prototxt" / path.name).write_text(text)
    done = subprocess.run(["bash", str(ROOT / "examples" / "train_cli.sh"), "focal"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "focal"
    assert "Optimization Done." in (run_dir / "train.log").read_text()
    assert (run_dir / "focal_iter_20.caffemodel").exists() and (run_dir / "precision_recall.png").exists()
    assert len(json.loads((run_dir / "thresholds.json").read_text())["thresholds"]) == NUM_CLASSES
    assert re.search(r"^mAP 0\.\d+ over", (run_dir / "evaluate.txt").read_text(), re.M)


def test_caffe_train_resumes_from_a_snapshot(cli_demo):
    out, _ = cli_demo
    log = subprocess.run([str(CAFFE_TOOL), "train", "--solver", str(out / "nets" / "focal_solver.prototxt"),
                          "--snapshot", str(out / "focal" / "focal_iter_10.solverstate")],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0")).stderr
    assert "Resuming from" in log, log[-2000:]
    shown = [int(i) for i in re.findall(r"Iteration (\d+) \(", log)]
    assert shown and min(shown) >= 10, log[-2000:]


def test_train_py_resumes_from_the_snapshot_iteration(pycaffe_demo):
    out, _ = pycaffe_demo
    solver = out / "nets" / "focal_solver.prototxt"
    history_path = out / "focal" / "focal_history.json"
    before = json.loads(history_path.read_text())["loss"]
    stdout = run(TRAIN, "--solver", solver, "--resume", out / "focal" / "focal_iter_10.solverstate", "--no-progress")
    assert "training from iteration 10 to 20, resumed from" in stdout
    assert f"iteration {QUICK_ITERS}: loss" in stdout
    after = json.loads(history_path.read_text())["loss"]
    assert len(after) == QUICK_ITERS and after[:10] == before[:10]
    # the 11th iteration starts from the snapshot's weights (HDF5Data restarts at the first batch, so it is
    # not the uninterrupted run's 11th, but it is far below the loss of fresh weights)
    assert after[10] != before[10] and after[10] < before[0]


def test_train_py_snapshots_on_sigterm(pycaffe_demo, tmp_path):
    out, _ = pycaffe_demo
    text = (out / "nets" / "softmax_solver.prototxt").read_text()
    text = re.sub(r"max_iter: \d+", "max_iter: 100000", text)
    text = re.sub(r'snapshot_prefix: ".*"', f'snapshot_prefix: "{tmp_path}/long"', text)
    solver = tmp_path / "long_solver.prototxt"
    solver.write_text(text)
    process = subprocess.Popen([sys.executable, str(TRAIN), "--solver", str(solver), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()        # printed once the signal handlers are in place
        assert "training from iteration 0" in first, first + process.stderr.read()
        time.sleep(1.0)                          # a few iterations
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stdout + stderr
    stopped_at = int(re.search(r"stopped by signal 15 at iteration (\d+)", stdout).group(1))
    assert stopped_at < 100000
    assert (tmp_path / f"long_iter_{stopped_at}.solverstate").exists()
    assert (tmp_path / f"long_iter_{stopped_at}.caffemodel").exists()
    assert len(json.loads((tmp_path / "long_history.json").read_text())["loss"]) == stopped_at


def test_bundled_data_is_deterministic_imbalanced_and_caffe_shaped(tmp_path):
    spec = DigitsSpec(seed=7)
    lists = make_digits(str(tmp_path / "a"), sizes=(400, 50, 50), spec=spec)
    make_digits(str(tmp_path / "b"), sizes=(400, 50, 50), spec=spec)
    for split in ("train", "val", "test"):
        h5_path = Path(Path(lists[split]).read_text().strip())
        assert h5_path == (tmp_path / "a" / f"{split}.h5").resolve()
        with h5py.File(h5_path, "r") as a, h5py.File(tmp_path / "b" / f"{split}.h5", "r") as b:
            assert a["data"].dtype == np.float32 and a["label"].dtype == np.float32
            np.testing.assert_array_equal(a["data"][:], b["data"][:])
            np.testing.assert_array_equal(a["label"][:], b["label"][:])
    with h5py.File(tmp_path / "a" / "train.h5", "r") as handle:
        data, label = handle["data"][:], handle["label"][:]
    assert data.shape == (400, 1, 32, 32) and label.shape == (400, NUM_CLASSES)
    assert data.min() == 0 and data.max() <= 1
    digits_per_image = label.sum(axis=1)
    assert digits_per_image.min() == 1 and digits_per_image.max() == 4
    counts = label.sum(axis=0)
    common, rare = counts[[d for d in range(10) if d not in spec.rare_digits]], counts[list(spec.rare_digits)]
    assert rare.max() * 4 < common.min()                 # drawn 10x less often per draw


README_BEGIN = "<!-- demo table: written by examples/demo.py --readme -->"
README_END = "<!-- end demo table -->"


def demo_block(text):
    return text[text.index(README_BEGIN):text.index(README_END)]


def test_readme_table_is_what_the_demo_writes(tmp_path):
    """--readme replaces the block between the markers with the run's own table and machine line and
    leaves the rest byte for byte; the committed block has the columns and variants the demo writes."""
    committed = (ROOT / "examples" / "README.md").read_text()
    readme = tmp_path / "README.md"
    readme.write_text(committed)
    out = tmp_path / "out"
    stdout = run(DEMO, "--quick", "--out", out, "--no-progress", "--variants", "focal", "--readme", readme)
    written = readme.read_text()
    assert written.replace(demo_block(written), "") == committed.replace(demo_block(committed), "")
    block = demo_block(written)
    assert (out / "results.md").read_text().strip() in block
    assert re.search(r"^Measured on \d+ CPU cores \(.+\), Python 3\.\d+\.\d+, numpy \S+, one OpenBLAS thread; "
                     r"the demo took \d+\.\d minutes\.$", block, re.M), block
    assert "wrote the table into" in stdout
    # the committed table: the header the demo writes, one row per variant of the nets, in order
    header = next(line for line in block.splitlines() if line.startswith("| variant"))
    committed_lines = demo_block(committed).splitlines()
    assert header in committed_lines
    rows = [line.split("|")[1].strip() for line in committed_lines if line.startswith("| ") and line != header]
    assert rows == list(VARIANTS)


def test_readme_without_a_table_block_is_refused_before_the_run(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no block here\n")
    done = subprocess.run([sys.executable, str(DEMO), "--quick", "--out", str(tmp_path / "out"), "--readme",
                           str(readme)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (f"demo: --readme {str(readme)!r} has no demo table block "
                                                    f"({README_BEGIN} ... {README_END})")
    assert readme.read_text() == "# no block here\n" and not (tmp_path / "out").exists()

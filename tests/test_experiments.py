"""experiments/run.py (the measurements behind docs/choosing-a-loss.md) and caffe_layers.init (the
prior initialisation): the quick run end to end through its command line, its tables against the
guide's, the committed tables against the committed results, and the prior bias through a real net."""
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

RUN = ROOT / "experiments" / "run.py"
GUIDE = ROOT / "docs" / "choosing-a-loss.md"
RESULTS = ROOT / "docs" / "choosing-a-loss.json"
sys.path[:0] = [str(ROOT / "experiments"), str(ROOT / "examples")]

import report  # noqa: E402
from caffe_layers.init import bias_filler, prior_bias  # noqa: E402


def run(*argv, timeout=300):
    return subprocess.run([sys.executable, str(RUN), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments_quick")
    done = run("--quick", "--out", out, "--no-progress")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def header(table):
    return table.splitlines()[0]


def rows(table):
    """{first cell: [cells]} of a markdown table."""
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[cells[0]] = cells
    return out


# ---------------------------------------------------------------- the prior initialisation

@pytest.mark.parametrize("pi", [1e-6, 0.01, 0.1, 0.25, 0.5, 0.9, 1 - 1e-9])
def test_prior_bias_is_the_logit_of_pi(pi):
    from scipy.special import expit, logit
    assert prior_bias(pi) == pytest.approx(float(logit(pi)), rel=1e-12, abs=1e-12)
    assert float(expit(prior_bias(pi))) == pytest.approx(pi, rel=1e-9)


def test_prior_bias_of_retinanet():
    # -log(0.99 / 0.01) = -log(99), by hand
    assert prior_bias(0.01) == pytest.approx(-4.59511985013459, abs=1e-13)
    assert bias_filler() == {"type": "constant", "value": pytest.approx(-4.59511985013459, abs=1e-13)}
    assert bias_filler(0.5) == {"type": "constant", "value": 0.0}


@pytest.mark.parametrize("pi", [0, 1, -0.1, 1.5, float("nan"), float("inf")])
def test_prior_bias_outside_0_1_is_refused(pi):
    with pytest.raises(ValueError, match=r"^prior_bias: 'pi' must be in \(0, 1\).*\(got " + re.escape(repr(pi)) + r"\)"):
        prior_bias(pi)


@pytest.mark.parametrize("pi", ["0.01", None, True, [0.01]])
def test_prior_bias_of_a_non_number_is_refused(pi):
    with pytest.raises(TypeError, match=r"^prior_bias: 'pi' must be a number in \(0, 1\) \(got "):
        prior_bias(pi)


def test_bias_filler_starts_a_real_net_at_the_prior(tmp_path):
    caffe = pytest.importorskip("caffe")
    from caffe import layers as L
    from caffe_layers import netspec
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 5, 5]))
    n.score = L.Convolution(n.data, num_output=10, kernel_size=3, pad=1,
                            weight_filler=dict(type="gaussian", std=0.01), bias_filler=bias_filler(0.01))
    n.prob = L.Sigmoid(n.score)
    text = netspec.to_prototxt(n)
    assert 'type: "constant"\n      value: -4.59512\n' in text     # what the module docstring says to paste
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = caffe.Net(str(path), caffe.TEST)
    assert np.array_equal(net.params["score"][1].data, np.full(10, np.float32(-4.59511985013459)))
    net.blobs["data"].data[...] = 0
    prob = net.forward()["prob"]
    assert prob.shape == (2, 10, 5, 5)
    assert np.allclose(prob, 0.01, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- the dense task's data

def test_dense_labels_mark_each_digit_centre_cell():
    """Every digit's 8x8 image carries a marker (1.0) at its top-left pixel and its class in the rest,
    so the digits can be found in the canvas without the generator's bookkeeping."""
    import setups
    spec = setups.EXPERIMENTS["dense"].spec
    pool = []
    for d in range(10):
        image = np.full((3, 8, 8), (d + 1) / 20, np.float32)
        image[:, 0, 0] = 1.0
        pool.append(image)
    data, label = setups.dense_canvases(50, pool, spec, np.random.default_rng(3))
    assert data.shape == (50, 1, 64, 64) and label.shape == (50, 10, 8, 8)
    counts = []
    for i in range(50):
        expected = np.zeros((10, 8, 8), np.float32)
        for y, x in np.argwhere(data[i, 0] == 1.0):
            d = int(round(data[i, 0, y + 1, x + 1] * 20)) - 1
            expected[d, (y + 4) // 8, (x + 4) // 8] = 1.0       # the centre (y + 4, x + 4) and its 8x8 cell
        assert np.array_equal(label[i], expected), i
        counts.append(int(expected.sum()))
    assert min(counts) >= spec.min_digits and max(counts) <= spec.max_digits
    assert label.mean() < 0.01          # positives are well under 1% of the outputs


# ---------------------------------------------------------------- the quick run

def test_quick_run_writes_results_tables_and_plots(quick):
    out, stdout = quick
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and set(results["experiments"]) == {"multilabel", "dense"}
    for name, experiment in results["experiments"].items():
        seeds = experiment["setting"]["seeds"]
        assert len(experiment["runs"]) == len(experiment["variants"]) * len(seeds)
        for record in experiment["runs"]:
            assert record["curve"] and record["curve"][-1]["iter"] == experiment["setting"]["schedule"]["max_iter"]
            assert (out / "runs" / name / f"{record['variant']}_seed{record['seed']}.json").is_file()
    for plot in report.plot_names(results):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "experiments took" in stdout
    assert not [p for p in out.rglob(".*") if p.is_file()]      # no temporary file left behind


def test_quick_tables_are_the_means_and_sds_of_the_runs(quick):
    out, _ = quick
    results = json.loads((out / "results.json").read_text())
    tables = report.blocks(results)
    for name, column, key in (("multilabel", 2, "ap"), ("multilabel", 5, "rare_ap"), ("dense", 3, "ap")):
        experiment = results["experiments"][name]
        table = rows(tables[name])
        for variant in experiment["variants"]:
            values = [r["test"][key] for r in experiment["runs"] if r["variant"] == variant["name"]]
            assert len(values) == len(experiment["setting"]["seeds"]) >= 2
            expected = f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
            assert table[variant["name"]][column] == expected


def test_quick_tables_have_the_columns_the_guide_shows(quick):
    out, _ = quick
    written = report.guide_blocks((out / "tables.md").read_text())
    shown = report.guide_blocks(GUIDE.read_text())
    assert set(written) == set(shown)
    for name, text in shown.items():
        if text.startswith("|"):
            assert header(written[name]).split(" | ")[0] == header(text).split(" | ")[0]
            if "ranking" not in name:       # a ranking table names the iterations it shows
                assert header(written[name]) == header(text), name
            assert set(rows(written[name])) == set(rows(text)), name


def test_quick_run_is_deterministic(quick, tmp_path):
    out, _ = quick
    done = run("--quick", "--only", "multilabel", "--out", tmp_path, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads((out / "results.json").read_text())["experiments"]["multilabel"]["runs"]
    second = json.loads((tmp_path / "results.json").read_text())["experiments"]["multilabel"]["runs"]
    assert [(r["variant"], r["seed"], r["test"], r["curve"]) for r in first] == \
        [(r["variant"], r["seed"], r["test"], r["curve"]) for r in second]


def test_a_second_start_reuses_finished_runs(quick, tmp_path):
    out, _ = quick
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p: p.stat().st_mtime_ns for p in (copy / "runs").rglob("*.json")}
    done = run("--quick", "--out", copy, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reusing 12 finished runs" in done.stdout and "reusing 20 finished runs" in done.stdout
    assert {p: p.stat().st_mtime_ns for p in (copy / "runs").rglob("*.json")} == before
    assert json.loads((copy / "results.json").read_text())["experiments"] == \
        json.loads((out / "results.json").read_text())["experiments"]


# ---------------------------------------------------------------- the committed guide

def test_committed_guide_tables_are_what_the_results_give():
    """docs/choosing-a-loss.md shows exactly what `experiments/run.py --publish docs/choosing-a-loss.json`
    writes from the committed results."""
    results = json.loads(RESULTS.read_text())
    assert results["quick"] is False
    shown = report.guide_blocks(GUIDE.read_text())
    assert shown == report.blocks(results)
    for plot in report.plot_names(results):
        assert (ROOT / "docs" / f"{report.DOCS_PREFIX}{plot}").read_bytes()[:4] == b"\x89PNG"
        assert f"({report.DOCS_PREFIX}{plot})" in GUIDE.read_text()


def test_committed_results_are_a_full_run_over_three_seeds():
    results = json.loads(RESULTS.read_text())
    for experiment in results["experiments"].values():
        assert len(experiment["setting"]["seeds"]) >= 3
        assert len(experiment["runs"]) == len(experiment["variants"]) * len(experiment["setting"]["seeds"])
    assert results["machine"]["nproc"] >= 1 and results["machine"]["cpu"] and results["machine"]["numpy"]
    dense = results["experiments"]["dense"]["setting"]
    assert dense["positive_fraction"] < 0.01


def test_publish_rewrites_the_guide_as_it_is(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(GUIDE, docs / GUIDE.name)
    shutil.copy(RESULTS, docs / RESULTS.name)
    done = run("--publish", docs / RESULTS.name, "--docs", docs)
    assert done.returncode == 0, done.stderr
    assert (docs / GUIDE.name).read_bytes() == GUIDE.read_bytes()
    assert json.loads((docs / RESULTS.name).read_text()) == json.loads(RESULTS.read_text())
    results = json.loads(RESULTS.read_text())
    for plot in report.plot_names(results):
        assert (docs / f"{report.DOCS_PREFIX}{plot}").read_bytes()[:4] == b"\x89PNG"


def snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_publish_refuses_a_quick_run_and_writes_nothing(quick, tmp_path):
    out, _ = quick
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(GUIDE, docs / GUIDE.name)
    before, outputs = snapshot(docs), snapshot(out)
    done = run("--publish", out / "results.json", "--docs", docs)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"experiments/run.py: error: --publish {str(out / 'results.json')!r} holds a "
                                   f"--quick run; the guide shows full runs only: run experiments/run.py without "
                                   f"--quick and publish its results.json")
    assert snapshot(docs) == before and snapshot(out) == outputs


def test_publish_refuses_a_file_that_is_not_results(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(GUIDE, docs / GUIDE.name)
    bad = tmp_path / "results.json"
    bad.write_text('{"rows": []}')
    before = snapshot(tmp_path)
    done = run("--publish", bad, "--docs", docs)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"experiments/run.py: error: --publish {str(bad)!r} is not a results JSON")
    assert "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before


def test_guide_commands_parse_as_printed():
    """Each `experiments/run.py` command of the guide and of experiments/README.md is accepted by the
    script's own argument parser, and `make experiments` runs that script."""
    import shlex
    import run as run_module
    commands = []
    for doc in (GUIDE, ROOT / "experiments" / "README.md"):
        commands += [line.split("#")[0].strip() for line in doc.read_text().splitlines()
                     if line.strip().startswith(".venv/bin/python experiments/run.py")]
    assert len(commands) >= 3
    for command in commands:
        argv = shlex.split(command)[2:]
        run_module.parser().parse_args(argv)          # SystemExit(2) on an unknown option or a bad value
    makefile = (ROOT / "Makefile").read_text()
    assert "experiments: setup\n\t$(VENV)/bin/python experiments/run.py\n" in makefile


def test_guide_calibrate_and_evaluate_commands_run_as_printed(tmp_path):
    """The guide's `caffe-layers calibrate` / `evaluate` lines, on the quick demo's weights: the same
    options, with the demo's 20-iteration weights for the full demo's, run from a copy of the
    repository's prototxt/ in tmp_path (nothing is written into the checkout)."""
    import shlex
    demo = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--quick", "--out",
                           str(tmp_path / "runs"), "--variants", "focal", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    shutil.copytree(ROOT / "prototxt", tmp_path / "prototxt")
    lines = [line.strip() for line in GUIDE.read_text().splitlines()
             if line.strip().startswith(".venv/bin/caffe-layers ")]
    assert [shlex.split(line)[1] for line in lines] == ["calibrate", "evaluate"]
    for line in lines:
        argv = shlex.split(line.replace("focal_iter_2000", "focal_iter_20"))
        argv[0] = str(Path(sys.executable).parent / "caffe-layers")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    thresholds = json.loads((tmp_path / "runs" / "focal" / "thresholds.json").read_text())["thresholds"]
    assert len(thresholds) == 10
    assert (tmp_path / "runs" / "focal" / "precision_recall.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prototxt", "runs"]

"""benchmarks/bench_losses.py runs end to end (tiny shapes, one repetition) and prints its table."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("caffe")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_losses.py"
OUR_LAYERS = ["SigmoidFocalLoss gamma=2", "SigmoidFocalLoss gamma=0", "AsymmetricLoss gamma_neg=4 clip=0.05",
              "MultiLabelSoftmaxLoss, index labels", "MultiLabelSoftmaxLoss, dense multi-hot"]


def test_quick_run_prints_the_table(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "| case | layer | ms | ns/element | ratio | vs | peak extra memory |" in lines
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ("a", "b", "c"):
            rows[cells[0], cells[1]] = cells
    for case in "abc":
        for layer in ["SigmoidCrossEntropyLoss (Caffe)", "SoftmaxWithLoss (Caffe)"] + OUR_LAYERS:
            ms, ns = rows[case, layer][2:4]
            assert float(ms) > 0 and float(ns) > 0
        for layer in OUR_LAYERS:
            ratio, reference, memory = rows[case, layer][4:7]
            assert re.fullmatch(r"[0-9.e+]+x", ratio) and reference.endswith("(Caffe)")
            assert re.match(r"[0-9.]+x \(", memory)
    assert float(rows["a", "seed-style loops, focal gamma=2"][4].rstrip("x")) > 0
    assert ("a", "floor: exp + log (the sigmoid losses' transcendental part)") in rows
    assert "targets: not checked with --quick" in run.stdout

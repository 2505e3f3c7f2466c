#!/usr/bin/env python3
"""Which loss should I use? Train every loss setting of two experiments over several seeds, score
them, and write the tables and plots of docs/choosing-a-loss.md.

    .venv/bin/python experiments/run.py                          # what `make experiments` runs
    .venv/bin/python experiments/run.py --quick --out /tmp/e     # a smoke run of the same steps
    .venv/bin/python experiments/run.py --publish runs/experiments/results.json   # into docs/

1. ``multilabel``: the demo's digit canvases (rare digits 7, 8, 9): sigmoid cross-entropy, focal
   loss (gamma 2 with no alpha, alpha 0.25, alpha 0.75), the asymmetric loss (gamma_neg 4,
   gamma_pos 0, clip 0.05) and the multi-label softmax loss. Test mAP, macro F1 at thresholds
   calibrated on the validation set and at 0.5, rare-digit AP.
2. ``dense``: per cell of an 8x8 grid over 64x64 canvases, which digit has its centre there (0.4%
   of the outputs are positive): cross-entropy from a zero bias and from the prior
   initialisation, focal loss over gamma and alpha, all with ``normalization: "positives"``.
   AP over cells.

Each setting is trained once per seed (each seed draws the data and the initial weights), scored
on the validation set through training (the curves) and on the test set at the end. Results go
under ``--out`` (default runs/experiments/): results.json, tables.md and the plots; each finished
run is kept in runs/EXPERIMENT/VARIANT_seedS.json and reused when the script is started again
with the same settings (``--fresh`` retrains). ``--publish RESULTS`` copies a full run's results
into docs/ (docs/choosing-a-loss.json, the plots) and rewrites the tables of
docs/choosing-a-loss.md from them; ``--publish docs/choosing-a-loss.json`` redraws them from the
committed results.

Deterministic: CPU mode, one OpenBLAS thread (``OPENBLAS_NUM_THREADS=1`` unless set), seeded
data and solvers. Same machine, same figures.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before caffe (and numpy's OpenBLAS) is imported
os.environ.setdefault("GLOG_minloglevel", "2")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (HERE, ROOT) if p not in sys.path]

import numpy as np  # noqa: E402

import report  # noqa: E402
import setups  # noqa: E402  (it puts examples/ on the path)
import machine  # noqa: E402  (examples/machine.py)
from caffe_layers.files import write_text  # noqa: E402

PROG = "experiments/run.py"
SCORE_BATCH = 250
VERSION = 1   # bump when a change makes cached runs stale


# ---------------------------------------------------------------- one training run

def solver_text(net_path, schedule, seed):
    s = schedule
    return (f'net: "{net_path}"\nbase_lr: {s.base_lr}\nlr_policy: "poly"\npower: 1\nmomentum: 0.9\n'
            f"weight_decay: {s.weight_decay}\nmax_iter: {s.max_iter}\ndisplay: 0\nsolver_mode: CPU\n"
            f"random_seed: {seed + 1}\nsnapshot_after_train: false\ntype: \"SGD\"\n")


def probabilities(experiment, variant, net, data):
    """The probabilities of ``data`` ``(N, ...)`` as ``(rows, C)``: one row per canvas or per cell."""
    from caffe_layers.decoding import activate
    out = []
    for start in range(0, len(data), SCORE_BATCH):
        chunk = data[start:start + SCORE_BATCH]
        net.blobs["data"].reshape(*chunk.shape)
        net.blobs["data"].data[...] = chunk
        out.append(experiment.flat(net.forward()["score"]).astype(np.float64))
    return activate(np.concatenate(out), variant.activation)


def mean_ap(probs, labels):
    from caffe_layers.metrics import average_precision, nan_mean
    return nan_mean(average_precision(probs, labels == 1))


def train_run(experiment, variant, seed, setting, data, workdir, bar):
    """Train one (variant, seed); returns its record (validation curve, test figures, time)."""
    import caffe
    from caffe_layers import decoding, metrics
    from caffe_layers.netspec import to_prototxt
    schedule = setting.schedule
    net_path = os.path.join(workdir, f"{variant.name}_train.prototxt")
    score_path = os.path.join(workdir, f"{variant.name}_score.prototxt")
    solver_path = os.path.join(workdir, f"{variant.name}_solver.prototxt")
    write_text(net_path, to_prototxt(experiment.net(variant, schedule.batch_size, train=True)))
    write_text(score_path, to_prototxt(experiment.net(variant, SCORE_BATCH, train=False)))
    write_text(solver_path, solver_text(net_path, schedule, seed))
    solver = caffe.get_solver(solver_path)
    scorer = caffe.Net(score_path, caffe.TEST)
    scorer.share_with(solver.net)          # the same weights, updated in place by the solver

    x, y = data["train"]
    val_x, val_y = data["val"]
    val_rows = experiment.flat(val_y)
    net = solver.net
    losses, curve, diverged = [], [], None
    started = time.perf_counter()
    cursor = 0
    for it in range(1, schedule.max_iter + 1):
        index = np.arange(cursor, cursor + schedule.batch_size) % len(x)   # in order, wrapping round,
        cursor = (cursor + schedule.batch_size) % len(x)                   # as Caffe's HDF5Data reads
        net.blobs["data"].data[...] = x[index]
        net.blobs["label"].data[...] = y[index]
        try:
            solver.step(1)
        except FloatingPointError as error:          # the layer's check_finite: scores or loss overflowed
            diverged = {"iter": it, "error": str(error).splitlines()[0][:300]}
            break
        loss = float(net.blobs["loss"].data)
        if not math.isfinite(loss):
            diverged = {"iter": it, "error": f"loss {loss}"}
            break
        losses.append(loss)
        bar.update(1)
        if it % schedule.val_interval == 0 or it == schedule.max_iter:
            window = losses[-schedule.val_interval:]
            curve.append({"iter": it, "val_ap": mean_ap(probabilities(experiment, variant, scorer, val_x), val_rows),
                          "train_loss": float(np.mean(window))})
            bar.set_postfix_str(f"val {experiment.metric} {curve[-1]['val_ap']:.3f}", refresh=False)
    seconds = time.perf_counter() - started
    record = {"variant": variant.name, "seed": seed, "seconds": seconds, "curve": curve, "diverged": diverged,
              "final_loss": float(np.mean(losses[-schedule.val_interval:])) if losses else None}
    if diverged:
        bar.update(schedule.max_iter - len(losses))
        return record
    val_probs = probabilities(experiment, variant, scorer, val_x)
    calibration = decoding.calibrate_thresholds(val_probs, val_rows == 1, "f1")
    test_x, test_y = data["test"]
    probs, labels = probabilities(experiment, variant, scorer, test_x), experiment.flat(test_y)
    calibrated = metrics.evaluate(probs, labels, calibration.thresholds)
    at_half = metrics.evaluate(probs, labels, 0.5)
    record["test"] = {"ap": calibrated["overall"]["mAP"], "ap_per_class": calibrated["ap"].tolist(),
                      "macro_f1": calibrated["overall"]["macro_f1"],
                      "macro_f1_at_0.5": at_half["overall"]["macro_f1"],
                      "thresholds": calibration.thresholds.tolist()}
    if experiment.name == "multilabel":
        rare = list(experiment.spec.rare_digits)
        record["test"]["rare_ap"] = float(np.mean(calibrated["ap"][rare]))
    return record


# ---------------------------------------------------------------- the runs, cached

def run_key(experiment, variant, seed, setting):
    """A fingerprint of everything that decides a run's figures."""
    text = json.dumps({"version": VERSION, "experiment": experiment.name, "variant": asdict(variant), "seed": seed,
                       "sizes": setting.sizes, "schedule": asdict(setting.schedule),
                       "spec": repr(experiment.spec_for(seed))}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_cached(path, key):
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def run_experiment(experiment, quick, out, fresh, progress, log):
    from tqdm import tqdm
    setting = experiment.setting(quick)
    folder = os.path.join(out, "runs", experiment.name)
    os.makedirs(folder, exist_ok=True)
    todo, records = [], {}
    for seed in setting.seeds:
        for variant in experiment.variants:
            path = os.path.join(folder, f"{variant.name}_seed{seed}.json")
            key = run_key(experiment, variant, seed, setting)
            cached = None if fresh else read_cached(path, key)
            if cached is not None:
                records[variant.name, seed] = cached
            else:
                todo.append((seed, variant, path, key))
    if len(records):
        log(f"{experiment.name}: reusing {len(records)} finished runs from {folder}")
    total = len(todo) * setting.schedule.max_iter
    data, data_seed = None, None
    positives = {}     # seed: the share of positive training targets
    with tempfile.TemporaryDirectory(prefix="nets-", dir=folder) as workdir, \
            tqdm(total=total, desc=experiment.name, unit="it", disable=not progress or not total,
                 dynamic_ncols=True, mininterval=1.0) as bar:
        for i, (seed, variant, path, key) in enumerate(todo, start=1):
            if data_seed != seed:
                data, data_seed = experiment.make_data(setting.sizes, seed), seed
                positives[seed] = float(data["train"][1].mean())
            bar.set_description_str(f"{experiment.name} [{i}/{len(todo)}] {variant.name} seed {seed}")
            record = train_run(experiment, variant, seed, setting, data, workdir, bar)
            record["key"] = key
            write_text(path, json.dumps(record) + "\n")
            records[variant.name, seed] = record
            figure = ("diverged at iteration " + str(record["diverged"]["iter"]) if record["diverged"]
                      else f"test {experiment.metric} {record['test']['ap']:.4f}")
            (bar.write if progress else log)(f"{experiment.name} {variant.name} seed {seed}: {figure} "
                                             f"({record['seconds']:.0f} s)")
    data = None
    for seed in setting.seeds:         # the seeds whose runs were all reused
        if seed not in positives:
            positives[seed] = float(experiment.make_data(setting.sizes, seed)["train"][1].mean())
    return {
        "title": experiment.title, "metric": experiment.metric,
        "setting": {"sizes": list(setting.sizes), "schedule": asdict(setting.schedule), "seeds": list(setting.seeds),
                    "canvas": experiment.spec.canvas,
                    "positive_fraction": float(np.mean([positives[seed] for seed in setting.seeds]))},
        "variants": [{"name": v.name, "layer": v.layer, "options": v.options, "activation": v.activation,
                      "settings": v.settings(), "init": v.init()} for v in experiment.variants],
        "runs": [records[v.name, s] for s in setting.seeds for v in experiment.variants],
    }


# ---------------------------------------------------------------- main

def write_outputs(results, out):
    report.write_plots(results, out)
    write_text(os.path.join(out, "tables.md"), report.tables_markdown(results))
    write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1) + "\n")


class Refused(Exception):
    """A mistake in what was given: one line on stderr, exit status 2, nothing written."""


def publish(path, docs, log):
    """Copy a full run's results into ``docs`` and redraw the guide's tables and plots from them."""
    try:
        with open(path) as handle:
            results = json.load(handle)
        results["experiments"], results["machine"], results["minutes"]
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise Refused(f"--publish {path!r} is not a results JSON that {PROG} wrote ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else 'missing'}); give OUT/results.json of a full "
                      f"run") from None
    if results.get("quick"):
        raise Refused(f"--publish {path!r} holds a --quick run; the guide shows full runs only: run {PROG} without "
                      f"--quick and publish its results.json")
    guide = os.path.join(docs, report.GUIDE_NAME)
    try:
        with open(guide) as handle:
            text = report.fill_guide(handle.read(), results)
    except OSError as error:
        raise Refused(f"--docs {docs!r}: cannot read the guide {guide!r} ({error.strerror}); give the docs folder "
                      f"that holds {report.GUIDE_NAME}") from None
    except ValueError as error:
        raise Refused(f"{guide!r}: {error}") from None
    target = os.path.join(docs, report.RESULTS_NAME)
    if not (os.path.exists(target) and os.path.samefile(path, target)):
        write_text(target, json.dumps(results, indent=1) + "\n")
    report.write_plots(results, docs, prefix=report.DOCS_PREFIX)
    write_text(guide, text)
    log(f"wrote {target}, the plots {', '.join(report.DOCS_PREFIX + n for n in report.plot_names(results))} and "
        f"the tables of {guide}")


def parser():
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "experiments"),
                        help="output folder (default: runs/experiments/)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: little data, a few iterations, 2 seeds")
    parser.add_argument("--only", choices=list(setups.EXPERIMENTS), nargs="+", default=list(setups.EXPERIMENTS),
                        help="run only these experiments")
    parser.add_argument("--fresh", action="store_true", help="retrain every run, even those finished before")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--publish", metavar="RESULTS_JSON",
                        help="write docs/choosing-a-loss.json, its plots and the guide's tables from these results, "
                             "then exit (nothing is trained)")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="with --publish: the docs folder "
                        "(default: docs/ of this checkout)")
    return parser


def main(argv=None):
    args = parser().parse_args(argv)
    log = print
    if args.publish:
        try:
            publish(args.publish, args.docs, log)
        except Refused as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 2
        return 0
    import caffe
    caffe.set_mode_cpu()
    started = time.perf_counter()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    results = {"quick": args.quick, "machine": machine.describe(), "experiments": {}}
    for name in args.only:
        results["experiments"][name] = run_experiment(setups.EXPERIMENTS[name], args.quick, out, args.fresh,
                                                      not args.no_progress, log)
    results["minutes"] = (time.perf_counter() - started) / 60          # this invocation, cached runs included
    results["train_minutes"] = sum(r["seconds"] for e in results["experiments"].values() for r in e["runs"]) / 60
    write_outputs(results, out)
    log("")
    log(report.tables_markdown(results))
    log(f"wrote {out}/results.json, tables.md and the plots ({', '.join(report.plot_names(results))})")
    log(f"experiments took {results['minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

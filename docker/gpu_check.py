#!/usr/bin/env python3
"""GPU check of the CUDA image: the loss layers in GPU mode, their speed next to Caffe's CUDA
loss layers, and training on two GPUs. It prints one table.

    docker run --rm --gpus all caffe-layers:cuda python docker/gpu_check.py
    python docker/gpu_check.py --cpu --quick     # a dry run of the same steps, in CPU mode

1. GPU mode against CPU mode, in real nets (an InnerProduct or a 1x1 Convolution computes the
   scores, so the blobs cross between GPU and CPU memory around the Python layer every pass;
   ``force_backward`` and ``loss_weight: 3.7``): SigmoidFocalLoss and MultiLabelSoftmaxLoss. The
   loss, the gradient of the net's input and the parameter gradients of both modes must agree
   to within --tolerance, relative to each array's largest magnitude (float32; the GPU's GEMMs
   sum in another order).
2. GPU mode against Caffe's own CUDA layers: SigmoidFocalLoss with gamma 0 equals
   SigmoidCrossEntropyLoss, MultiLabelSoftmaxLoss on class-index labels equals SoftmaxWithLoss.
3. Speed, at the shapes of benchmarks/bench_losses.py: forward + backward of a net
   ``Parameter -> Power (identity, on the GPU) -> loss``, so that each pass moves the scores to
   the Python layer and its gradient back to the GPU, as in training. Each of our layers is
   timed next to Caffe's CUDA layer for the same task; the ratio is ours / Caffe's. Timings are
   reported, not judged.
4. With two or more GPUs: the demo's focal-loss net trains for --train-iters iterations on GPUs
   0 and 1 through docker/train_multi_gpu.sh (Caffe's python/train.py, NCCL); it passes when
   train.py exits 0, the losses are finite and the final snapshot is written.

Exit status: 0 when every check passed, 1 when one failed, 2 when the check cannot run here
(no GPU visible, or a Caffe built without CUDA). --cpu runs every step in CPU mode instead (the
numbers then say nothing about a GPU; the training step is skipped): it proves the script.
"""
import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRAIN_MULTI_GPU = HERE / "train_multi_gpu.sh"
LOSS_WEIGHT = 3.7  # not 1: a backward that ignores the top diff shows

# Nets for the GPU-vs-CPU checks: name -> (input shape, layer computing the scores, score shape)
NETS = {
    "fc": ((16, 24), 'type: "InnerProduct" inner_product_param { num_output: 10 '
                     'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: -0.5 } }',
           (16, 10)),
    "conv": ((2, 6, 7, 5), 'type: "Convolution" convolution_param { num_output: 8 kernel_size: 1 '
                           'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: -0.5 } }',
             (2, 8, 7, 5)),
}
# Our layer in GPU mode against CPU mode: (row label, layer, param_str)
OURS = [
    ("SigmoidFocalLoss gamma=2 alpha=0.25", "SigmoidFocalLoss", '{"gamma": 2, "alpha": 0.25}'),
    ("MultiLabelSoftmaxLoss", "MultiLabelSoftmaxLoss", "{}"),
]
# Our layer against Caffe's CUDA layer for the same loss: (row label, ours, param_str, Caffe's, label kind)
TWINS = [
    ("SigmoidFocalLoss gamma=0 = SigmoidCrossEntropyLoss", "SigmoidFocalLoss", '{"gamma": 0}',
     "SigmoidCrossEntropyLoss", "multi_hot"),
    ("MultiLabelSoftmaxLoss (index labels) = SoftmaxWithLoss", "MultiLabelSoftmaxLoss", "{}",
     "SoftmaxWithLoss", "index"),
]
# Timed pairs, by the row labels of benchmarks/bench_losses.py's LAYERS: (ours, Caffe's)
TIMED = [
    ("SigmoidFocalLoss gamma=2", "SigmoidCrossEntropyLoss (Caffe)"),
    ("SigmoidFocalLoss gamma=0", "SigmoidCrossEntropyLoss (Caffe)"),
    ("MultiLabelSoftmaxLoss, index labels", "SoftmaxWithLoss (Caffe)"),
    ("MultiLabelSoftmaxLoss, dense multi-hot", "SoftmaxWithLoss (Caffe)"),
]
DISPLAY = re.compile(r"Iteration (\d+)(?: \(.*?\))?, loss = (\S+)")


class CannotRun(Exception):
    """The check cannot run on this machine (exit status 2)."""


# ---- pure parts: arguments, comparison, table, log parsing --------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true",
                        help="run every step in CPU mode: a dry run for a machine without a GPU")
    parser.add_argument("--quick", action="store_true", help="tiny timing shapes and few repetitions")
    parser.add_argument("--gpu", type=int, default=0, help="GPU for steps 1-3 (default 0)")
    parser.add_argument("--cases", default="a,b,c", help="timing cases of benchmarks/bench_losses.py (default a,b,c)")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per layer (default 20)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest relative difference allowed between GPU and CPU mode (default 1e-4)")
    parser.add_argument("--train-iters", type=int, default=20, help="iterations of the 2-GPU training (default 20)")
    parser.add_argument("--no-train", action="store_true", help="skip the 2-GPU training")
    args = parser.parse_args(argv)
    args.cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    if not args.cases or any(case not in ("a", "b", "c") for case in args.cases):
        parser.error(f"--cases: comma-separated keys from a, b, c (got {','.join(args.cases) or 'none'})")
    for name in ("repeats", "train_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if not (0 < args.tolerance < 1):
        parser.error(f"--tolerance must be between 0 and 1 (got {args.tolerance})")
    return args


def relative_difference(got, expected):
    """max |got - expected| over the largest |expected| (1 when that is 0): 0 for equal arrays."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise ValueError(f"shapes differ: {got.shape} and {expected.shape}")
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(expected))):
        return math.inf
    scale = np.abs(expected).max(initial=0.0) or 1.0
    return float(np.abs(got - expected).max(initial=0.0) / scale)


def compare(got, expected, tolerance):
    """(ok, worst relative difference, its key) over the arrays both dicts hold."""
    if set(got) != set(expected):
        raise ValueError(f"different outputs: {sorted(got)} and {sorted(expected)}")
    worst = max(((relative_difference(got[k], expected[k]), k) for k in sorted(expected)), key=lambda p: p[0])
    return worst[0] <= tolerance, worst[0], worst[1]


def format_table(rows, header=("check", "case", "result", "details")):
    """A Markdown table; every row has len(header) cells."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, the header {len(header)}")
    cells = [list(header)] + [[str(c).replace("|", "/") for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def training_losses(log):
    """[(iteration, loss)] from the `Iteration N (...), loss = X` lines of a Caffe log."""
    return [(int(m.group(1)), float(m.group(2))) for m in DISPLAY.finditer(log)]


def gpu_count():
    """GPUs that nvidia-smi lists (0 when there is no nvidia-smi or it finds none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    out = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def gpu_names():
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return ", ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or "unknown"


# ---- nets ---------------------------------------------------------------------------------

def python_layer(name, bottoms, top, layer, param_str):
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    return (f'layer {{ name: "{name}" type: "Python" {bottom} top: "{top}"\n'
            f'  python_param {{ module: "caffe_layers" layer: "{layer}" param_str: \'{param_str}\' }}\n'
            f"  loss_weight: {LOSS_WEIGHT} }}\n")  # a Python layer is not a LossLayer: say it is a loss


def caffe_loss_layer(name, bottoms, top, kind):
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    return (f'layer {{ name: "{name}" type: "{kind}" {bottom} top: "{top}" loss_weight: {LOSS_WEIGHT}\n'
            f"  loss_param {{ normalization: BATCH_SIZE }} }}\n")  # our layers' default normalization


def shape_text(shape):
    return "shape { " + " ".join(f"dim: {d}" for d in shape) + " }"


def index_shape(shape):
    """Class-index labels for scores of this shape: (N,) for (N, C), (N, 1, H, W) for (N, C, H, W)."""
    return (shape[0],) if len(shape) == 2 else (shape[0], 1) + tuple(shape[2:])


def checked_net_text(net, loss):
    """Input data and labels -> the scoring layer -> LOSS (prototxt of the loss layer(s), bottoms
    "scores" and "multi_hot" or "index")."""
    data_shape, scorer, score_shape = NETS[net]
    return (f'name: "gpu_check_{net}"\nforce_backward: true\n'
            f'layer {{ name: "input" type: "Input" top: "data" top: "multi_hot" top: "index"\n'
            f"  input_param {{ {shape_text(data_shape)} {shape_text(score_shape)} "
            f"{shape_text(index_shape(score_shape))} }} }}\n"
            f'layer {{ name: "scores" bottom: "data" top: "scores" {scorer} }}\n' + loss)


def checked_inputs(net, seed=0):
    data_shape, _, score_shape = NETS[net]
    rng = np.random.default_rng(seed)
    index = rng.integers(0, score_shape[1], size=index_shape(score_shape))
    multi_hot = (rng.random(score_shape) < 0.15).astype(np.float32)
    np.put_along_axis(multi_hot, index.reshape((score_shape[0], 1) + tuple(score_shape[2:])), 1, axis=1)
    return {"data": rng.normal(0.0, 1.5, size=data_shape), "multi_hot": multi_hot, "index": index}


def set_mode(caffe, mode, gpu):
    if mode == "gpu":
        caffe.set_device(gpu)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()


def run_net(caffe, path, mode, gpu, inputs, params=None, diffs=("data",)):
    """Forward + backward of the net at PATH in MODE. Returns ({name: array}, params): the losses
    ("loss ..."), the gradients of the blobs DIFFS and of every parameter ("d ..."), and the
    parameters. PARAMS, when given, replaces the filled ones, so both modes start alike."""
    set_mode(caffe, mode, gpu)
    net = caffe.Net(str(path), caffe.TRAIN)
    if params is not None:
        for layer, blobs in params.items():
            for blob, value in zip(net.params[layer], blobs):
                blob.data[...] = value
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    tops = net.forward()
    net.backward()
    out = {f"loss {name}": np.array(value, dtype=np.float64).ravel()
           for name, value in tops.items() if name.startswith("loss")}
    for name in diffs:
        out[f"d {name}"] = net.blobs[name].diff.copy()
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            out[f"d {layer}[{i}]"] = blob.diff.copy()
    return out, {layer: [blob.data.copy() for blob in blobs] for layer, blobs in net.params.items()}


def case_name(net):
    return f"{net} {'x'.join(map(str, NETS[net][2]))}"


def check_modes(caffe, directory, args, mode):
    """Step 1: each of our layers, in each net, in MODE against CPU mode."""
    rows, ok = [], True
    for label, layer, param_str in OURS:
        for net in NETS:
            path = Path(directory) / f"{net}_{layer}.prototxt"
            path.write_text(checked_net_text(net, python_layer("loss", ["scores", "multi_hot"], "loss", layer,
                                                               param_str)))
            inputs = checked_inputs(net)
            expected, params = run_net(caffe, path, "cpu", args.gpu, inputs)
            got, _ = run_net(caffe, path, mode, args.gpu, inputs, params)
            passed, worst, key = compare(got, expected, args.tolerance)
            ok &= passed
            rows.append((f"{mode.upper()} mode = CPU mode: {label}", case_name(net), "ok" if passed else "FAILED",
                         f"worst relative difference {worst:.2g} ({key}), {len(expected)} arrays"))
    return rows, ok


def check_twins(caffe, directory, args, mode):
    """Step 2: our layer and Caffe's for the same loss, side by side in one net, in MODE."""
    rows, ok = [], True
    split = 'layer { name: "split" type: "Split" bottom: "scores" top: "ours" top: "theirs" }\n'
    for label, layer, param_str, kind, labels in TWINS:
        for net in NETS:
            path = Path(directory) / f"{net}_{layer}_{kind}.prototxt"
            path.write_text(checked_net_text(
                net, split + python_layer("loss_ours", ["ours", labels], "loss_ours", layer, param_str)
                + caffe_loss_layer("loss_theirs", ["theirs", labels], "loss_theirs", kind)))
            got, _ = run_net(caffe, path, mode, args.gpu, checked_inputs(net), diffs=("ours", "theirs"))
            ours, theirs = got["loss loss_ours"], got["loss loss_theirs"]
            difference = max(relative_difference(ours, theirs), relative_difference(got["d ours"], got["d theirs"]))
            passed = difference <= args.tolerance
            ok &= passed
            rows.append((f"{mode.upper()} mode: {label} ({'CUDA' if mode == 'gpu' else 'CPU'})", case_name(net),
                         "ok" if passed else "FAILED",
                         f"loss {float(ours[0]):.6g} vs {float(theirs[0]):.6g}; worst relative difference "
                         f"of loss and score gradient {difference:.2g}"))
    return rows, ok


def time_pairs(caffe, directory, args, mode):
    """Step 3: forward + backward of Parameter -> Power -> loss, ours next to Caffe's."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_losses  # noqa: E402  (imports caffe; the shapes, layer options and data of the CPU benchmark)
    layers = {label: (kind, bottoms, params) for label, kind, bottoms, params, _ in bench_losses.LAYERS}
    rows = []
    for case in args.cases:
        title, shape, _, extra = bench_losses.CASES[case]
        shape = bench_losses.QUICK_SHAPES[case] if args.quick else shape
        repeats = 2 if args.quick else args.repeats
        seconds = {}
        for label in sorted({name for pair in TIMED for name in pair}):
            kind, bottoms, params = layers[label]
            if kind in ("SigmoidCrossEntropyLoss", "SoftmaxWithLoss"):
                loss = caffe_loss_layer("loss", ["scores", *bottoms], "loss", kind)
            else:
                loss = python_layer("loss", ["scores", *bottoms], "loss", kind,
                                    params if isinstance(params, str) else json.dumps(params))
            path = Path(directory) / f"time_{case}_{len(seconds)}.prototxt"
            path.write_text(
                f'name: "gpu_check_time"\n'
                f'layer {{ name: "targets" type: "Input" top: "multi_hot" top: "index" '
                f"input_param {{ {shape_text(shape)} {shape_text(index_shape(shape))} }} }}\n"
                f'layer {{ name: "param" type: "Parameter" top: "score_param" parameter_param {{ {shape_text(shape)} }} }}\n'
                f'layer {{ name: "identity" type: "Power" bottom: "score_param" top: "scores" }}\n' + loss)
            set_mode(caffe, mode, args.gpu)
            net = caffe.Net(str(path), caffe.TRAIN)
            bench_losses.fill(net, shape, extra, np.random.default_rng(12345))
            for _ in range(2):  # warm-up: first-touch allocations, cuBLAS handles
                net.forward()
                net.backward()
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                net.forward()
                net.backward()
                net.params["param"][0].diff  # waits for the GPU: the gradient is copied back to the host
                samples.append(time.perf_counter() - start)
            seconds[label] = statistics.median(samples)
            del net
        size = "x".join(map(str, shape))
        for ours, theirs in TIMED:
            ratio = seconds[ours] / seconds[theirs]
            rows.append((f"time ({mode.upper()}): {ours} / {theirs.replace(' (Caffe)', '')}",
                         f"{case} {size}" + (" (quick)" if args.quick else ""), f"{ratio:.3g}x",
                         f"{seconds[ours] * 1e3:.3f} ms vs {seconds[theirs] * 1e3:.3f} ms, median of {repeats}"))
    return rows


def prepare_training(directory, iterations):
    """The demo's data (small) and its focal-loss net and solver under DIRECTORY, for ITERATIONS
    iterations ending in a snapshot. Returns (solver path, final snapshot path)."""
    sys.path[:0] = [str(ROOT / "examples"), str(ROOT)]
    import digits_data  # noqa: E402
    import make_nets  # noqa: E402
    data_dir, net_dir, run_dir = (os.path.join(directory, name) for name in ("digits", "nets", "runs"))
    digits_data.make_digits(data_dir, (512, 128, 128))
    schedule = make_nets.Schedule(max_iter=iterations, batch_size=32, val_size=128,
                                  test_interval=iterations, snapshot=iterations, display=5)
    files = make_nets.generate(net_dir, data_dir, run_dir, schedule, variants={"focal": make_nets.VARIANTS["focal"]},
                               with_snippets=False)
    make_nets.write(files, net_dir)
    os.makedirs(os.path.join(run_dir, "focal"), exist_ok=True)
    return (os.path.join(net_dir, "focal_solver.prototxt"),
            os.path.join(run_dir, "focal", f"focal_iter_{iterations}.caffemodel"))


def train_two_gpus(args, directory):
    """Step 4: the demo's focal-loss net, trained on GPUs 0 and 1 by train_multi_gpu.sh."""
    solver, snapshot = prepare_training(directory, args.train_iters)
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    started = time.perf_counter()
    done = subprocess.run(["bash", str(TRAIN_MULTI_GPU), solver, "0", "1"], capture_output=True, text=True,
                          env=env, timeout=900)
    elapsed = time.perf_counter() - started
    log = done.stdout + done.stderr
    losses = training_losses(log)
    problems = []
    if done.returncode != 0:
        problems.append(f"exit status {done.returncode}")
    if not losses or not all(math.isfinite(loss) for _, loss in losses):
        problems.append("no finite losses in the log")
    if not os.path.isfile(snapshot):
        problems.append("no final snapshot")
    case = f"focal demo net, {args.train_iters} iterations, GPUs 0 and 1"
    if problems:
        tail = " / ".join(log.strip().splitlines()[-3:])
        return ("2-GPU training (train_multi_gpu.sh)", case, "FAILED", f"{'; '.join(problems)}; log ends: {tail}"), False
    return (("2-GPU training (train_multi_gpu.sh)", case, "ok",
             f"loss {losses[0][1]:.4g} (iteration {losses[0][0]}) -> {losses[-1][1]:.4g} (iteration {losses[-1][0]}), "
             f"{elapsed:.1f} s, snapshot written"), True)


def main(argv=None):
    args = parse_args(argv)
    gpus = gpu_count()
    mode = "cpu" if args.cpu else "gpu"
    try:
        if mode == "gpu" and gpus == 0:
            raise CannotRun("no GPU visible (nvidia-smi is missing or lists none): run the container with "
                            "`--gpus all`, or pass --cpu for a dry run in CPU mode")
        if mode == "gpu" and args.gpu >= gpus:
            raise CannotRun(f"--gpu {args.gpu}: only {gpus} GPU(s) visible (ids 0..{gpus - 1})")
        os.environ.setdefault("GLOG_minloglevel", "2")
        try:
            import caffe
        except ImportError as error:
            raise CannotRun(f"cannot import caffe ({error}); run it in the image or in the set-up's .venv")
        sys.path.insert(0, str(HERE))
        from smoke_test import links_cudart  # noqa: E402
        if mode == "gpu" and not links_cudart():
            raise CannotRun("this Caffe was built without CUDA (CPU_ONLY); use the CUDA image")
    except CannotRun as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2

    where = f"{gpus} GPU(s): {gpu_names()}" if gpus else "no GPU"
    print(f"# gpu_check ({'CPU mode, a dry run' if args.cpu else 'GPU mode'}); {where}; Python "
          f"{sys.version.split()[0]}, numpy {np.__version__}", flush=True)
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as directory:
        for step in (check_modes, check_twins):
            step_rows, step_ok = step(caffe, directory, args, mode)
            rows += step_rows
            ok &= step_ok
        rows += time_pairs(caffe, directory, args, mode)
        training = ("2-GPU training (train_multi_gpu.sh)", "focal demo net")
        if args.no_train:
            rows.append(training + ("skipped", "--no-train"))
        elif args.cpu:
            rows.append(training + ("skipped", "--cpu: train.py trains on GPUs only"))
        elif gpus < 2:
            rows.append(training + ("skipped", f"{gpus} GPU visible; it needs 2"))
        else:
            row, passed = train_two_gpus(args, directory)
            rows.append(row)
            ok &= passed
    print(format_table(rows))
    print(f"gpu_check: {'every check passed' if ok else 'a check FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

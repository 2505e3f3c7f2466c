"""Time caffe_layers' loss layers next to Caffe's own, forward + backward, on the CPU.

For each case one TRAIN-phase net holds every layer under test, each with its own score blob
(a ``Parameter`` layer, so the scores need a gradient the way a network's output does, and
the targets, from an ``Input`` layer, need none). Repetitions interleave the layers, rotating
their order; each layer's time is the median of ``forward + backward`` of that layer alone
(pycaffe's ``_forward(i, i)`` and ``_backward(i, i)``, the calls ``caffe time`` makes), and
each ratio is the median over repetitions of (ours / Caffe's) measured in the same repetition,
so load from other processes cancels as far as it can.

Peak extra memory is measured with tracemalloc (NumPy reports its buffers to it) in a net of
its own per layer: the peak of Python-side allocations from building the net through two
forward + backward passes, over the bytes of the score blob. It includes the gradient buffer
the layer keeps (one score blob); Caffe's own blobs are C++ memory and are not counted.

The floor lines time the passes no implementation avoids: one exp and one log per element
(in cache-sized blocks, into a reused buffer; the sigmoid losses need both, the softmax losses
one exp), and one multiply streaming a whole blob into another (what backward's scaling by the
loss weight costs).

Timings are wall-clock (``time.perf_counter``). CPU time would mislead: Caffe's layers call
OpenBLAS, whose worker threads keep spinning after a call and would charge that to whichever
layer runs next. ``caffe time`` makes the same calls but feeds zeros (Input blobs have no
filler), which makes class-index labels all 0 and multi-hot targets all empty; here the data
are realistic.

Usage: ``python benchmarks/bench_losses.py [--quick] [--repeats N] [--cases a,b,c]`` or
``make bench``.
"""
import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # seed_layers, the loop baselines' module
sys.path.insert(1, str(HERE.parent))  # caffe_layers from this checkout

os.environ.setdefault("GLOG_minloglevel", "2")  # quiet Caffe's net-construction log
import caffe  # noqa: E402

from caffe_layers.blocks import BLOCK_ELEMENTS, CLASS_BLOCK_ELEMENTS  # noqa: E402

# name, score shape, repetitions (full run), fraction of extra positives in the multi-hot targets
CASES = {
    "a": ("256x1000 multi-hot classification", (256, 1000), 40, 0.004),
    "b": ("2x720x64x64 dense detection-style", (2, 720, 64, 64), 12, 0.002),
    "c": ("32x20 small", (32, 20), 200, 0.05),
}
QUICK_SHAPES = {"a": (8, 50), "b": (1, 12, 4, 4), "c": (32, 20)}

# Each layer: (row label, layer type, bottoms, param_str or loss_param, reference row for its ratio)
LAYERS = [
    ("SigmoidCrossEntropyLoss (Caffe)", "SigmoidCrossEntropyLoss", ("multi_hot",), "", None),
    ("SigmoidFocalLoss gamma=2", "SigmoidFocalLoss", ("multi_hot",), {"gamma": 2},
     "SigmoidCrossEntropyLoss (Caffe)"),
    ("SigmoidFocalLoss gamma=0", "SigmoidFocalLoss", ("multi_hot",), {"gamma": 0},
     "SigmoidCrossEntropyLoss (Caffe)"),
    # the defaults, the paper's recipe: gamma_pos 0, gamma_neg 4, clip 0.05
    ("AsymmetricLoss gamma_neg=4 clip=0.05", "AsymmetricLoss", ("multi_hot",), {},
     "SigmoidCrossEntropyLoss (Caffe)"),
    ("SoftmaxWithLoss (Caffe)", "SoftmaxWithLoss", ("index",), "", None),
    ("MultiLabelSoftmaxLoss, index labels", "MultiLabelSoftmaxLoss", ("index",), {},
     "SoftmaxWithLoss (Caffe)"),
    ("MultiLabelSoftmaxLoss, dense multi-hot", "MultiLabelSoftmaxLoss", ("multi_hot",), {},
     "SoftmaxWithLoss (Caffe)"),
]
SEED_LAYERS = [
    ("seed-style loops, focal gamma=2", "seed_layers", "SeedFocalLoss", "{'focusing_parameter': 2}",
     "SigmoidFocalLoss gamma=2"),
    ("seed-style loops, multi-label softmax", "seed_layers", "SeedMultiLabelSoftmaxLoss", "",
     "MultiLabelSoftmaxLoss, dense multi-hot"),
]
TARGETS = [  # (case, our row, reference row, "at most" or "at least", ratio)
    (case, ours, ref, "at most", limit) for case in ("a", "b") for ours, ref, limit in [
        ("SigmoidFocalLoss gamma=2", "SigmoidCrossEntropyLoss (Caffe)", 0.5),
        ("SigmoidFocalLoss gamma=0", "SigmoidCrossEntropyLoss (Caffe)", 0.35),
        ("AsymmetricLoss gamma_neg=4 clip=0.05", "SigmoidCrossEntropyLoss (Caffe)", 0.5),
        ("MultiLabelSoftmaxLoss, index labels", "SoftmaxWithLoss (Caffe)", 1.0),
        ("MultiLabelSoftmaxLoss, dense multi-hot", "SoftmaxWithLoss (Caffe)", 1.0),
    ]
] + [("a", "seed-style loops, focal gamma=2", "SigmoidFocalLoss gamma=2", "at least", 300.0)]
MEMORY_LIMIT = 4.0  # peak extra memory, in score blobs, on the cases a and b


def _shape_text(shape):
    return "shape { " + " ".join(f"dim: {d}" for d in shape) + " }"


def _index_shape(shape):
    """SoftmaxWithLoss's label blob: ``(N,)`` for ``(N, C)``, else ``(N, 1, d1..dk)``."""
    return (shape[0],) if len(shape) == 2 else (shape[0], 1) + tuple(shape[2:])


def _layer_text(name, kind, bottoms, params, module="caffe_layers", python_layer=None):
    """Prototxt of a Parameter layer holding ``score_<name>`` and of the loss layer ``name``."""
    bottom = " ".join(f'bottom: "{b}"' for b in (f"score_{name}",) + tuple(bottoms))
    scores = (f'layer {{ name: "param_{name}" type: "Parameter" top: "score_{name}" '
              f"parameter_param {{ {{shape}} }} }}\n")
    if kind in ("SigmoidCrossEntropyLoss", "SoftmaxWithLoss"):
        loss = (f'layer {{ name: "{name}" type: "{kind}" {bottom} top: "loss_{name}" '
                f"loss_weight: 1 loss_param {{ normalization: BATCH_SIZE }} }}\n")
    else:
        param_str = params if isinstance(params, str) else json.dumps(params)
        quote = '"' if "'" in param_str else "'"
        loss = (f'layer {{ name: "{name}" type: "Python" {bottom} top: "loss_{name}"\n'
                f'  python_param {{ module: "{module}" layer: "{python_layer or kind}" '
                f"param_str: {quote}{param_str}{quote} }}\n"
                f"  loss_weight: 1 }}\n")
    return scores, loss


def build_net(shape, layers, directory):
    """One TRAIN net: Input targets, then a Parameter score blob and a loss layer per entry.

    layers: [(name, kind, bottoms, params, module, python_layer)]. Returns (net, {name: index}).
    """
    text = [f'name: "bench" layer {{ name: "targets" type: "Input" top: "multi_hot" top: "index" '
            f"input_param {{ {_shape_text(shape)} {_shape_text(_index_shape(shape))} }} }}\n"]
    for name, kind, bottoms, params, module, python_layer in layers:
        head, body = _layer_text(name, kind, bottoms, params, module, python_layer)
        text.append(head.replace("{shape}", _shape_text(shape)) + body)
    path = Path(directory) / f"bench_{len(os.listdir(directory))}.prototxt"
    path.write_text("".join(text))
    net = caffe.Net(str(path), caffe.TRAIN)
    names = list(net._layer_names)
    return net, {entry[0]: names.index(entry[0]) for entry in layers}


def fill(net, shape, extra_positives, rng):
    """Scores ~ N(-2, 2) (most classes absent), index labels uniform over classes, and multi-hot
    targets: each position's index label plus a few random extra positives."""
    num_classes = shape[1]
    index = rng.integers(0, num_classes, size=_index_shape(shape))
    multi_hot = (rng.random(shape, dtype=np.float32) < extra_positives).astype(np.float32)
    np.put_along_axis(multi_hot, index.reshape((shape[0], 1) + tuple(shape[2:])), 1, axis=1)
    net.blobs["multi_hot"].data[...] = multi_hot
    net.blobs["index"].data[...] = index
    for name, blob in net.blobs.items():
        if name.startswith("score_"):
            blob.data[...] = rng.normal(-2.0, 2.0, size=shape).astype(np.float32)


def time_layers(net, indices, repeats, warmup=2, clock=time.perf_counter):
    """Seconds of forward + backward per layer and repetition: {name: [seconds, ...]}."""
    order = list(indices)
    times = {name: [] for name in order}
    for rep in range(warmup + repeats):
        shift = rep % len(order)
        for name in order[shift:] + order[:shift]:  # rotate the order: no layer always runs first
            i = indices[name]
            start = clock()
            net._forward(i, i)
            net._backward(i, i)
            elapsed = clock() - start
            if rep >= warmup:
                times[name].append(elapsed)
    return times


def peak_memory(shape, entry, extra_positives, directory):
    """Peak Python-side bytes allocated while building a one-layer net and running it twice."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        net, indices = build_net(shape, [entry], directory)
        fill(net, shape, extra_positives, np.random.default_rng(0))
        # the filled targets and scores were written into Caffe's memory; drop NumPy's copies
        # from the peak by measuring from here
        after_fill = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        i = indices[entry[0]]
        for _ in range(2):
            net._forward(i, i)
            net._backward(i, i)
        peak = tracemalloc.get_traced_memory()[1]
        held = after_fill - base  # what the layer keeps between passes (its gradient buffer)
        return max(peak - after_fill + held, held) / (np.prod(shape) * 4)
    finally:
        tracemalloc.stop()
        del net
        gc.collect()


def floor_lines(shape, repeats, clock=time.perf_counter):
    """ns per element of the passes no implementation avoids: one exp and one log over the
    blob (in BLOCK_ELEMENTS chunks, into a reused buffer, as the layers do), and one multiply
    streaming a whole blob into another (backward's scaling by the loss weight)."""
    rng = np.random.default_rng(1)
    x = rng.normal(-2.0, 2.0, size=shape).astype(np.float32).ravel()
    one_plus_e = 1 + np.exp(-np.abs(x))  # the log's argument in the sigmoid layers: 1 + exp(-|x|)
    out = np.empty_like(x)
    buf = np.empty(BLOCK_ELEMENTS, dtype=np.float32)
    chunks = [slice(i, min(x.size, i + BLOCK_ELEMENTS)) for i in range(0, x.size, BLOCK_ELEMENTS)]

    def blocked(ufunc, source):
        def run():
            for chunk in chunks:
                ufunc(source[chunk], out=buf[:chunk.stop - chunk.start])
        return run

    runs = {"floor: exp, one pass": blocked(np.exp, x),
            "floor: log, one pass": blocked(np.log, one_plus_e),
            "floor: multiply blob -> blob, one pass": lambda: np.multiply(x, np.float32(0.5), out=out)}
    times = {name: [] for name in runs}
    for rep in range(repeats + 1):
        for name, run in runs.items():
            start = clock()
            run()
            if rep:
                times[name].append(clock() - start)
    floors = {name: statistics.median(t) for name, t in times.items()}
    floors["floor: exp + log (the sigmoid losses' transcendental part)"] = (
        floors["floor: exp, one pass"] + floors["floor: log, one pass"])
    return floors


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def machine():
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = " ".join(f"{k}={os.environ[k]}" for k in sorted(os.environ) if k.startswith(("OPENBLAS", "OMP_")))
    return (f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, numpy {np.__version__}, "
            f"BLOCK_ELEMENTS={BLOCK_ELEMENTS}, CLASS_BLOCK_ELEMENTS={CLASS_BLOCK_ELEMENTS}"
            + (f", {env}" if env else ""))


def run_case(key, shape, repeats, extra_positives, with_seed, seed_repeats, with_memory, directory, clock):
    rng = np.random.default_rng(12345)
    entries = [(label, kind, bottoms, params, "caffe_layers", None)
               for label, kind, bottoms, params, _ in LAYERS]
    net, indices = build_net(shape, entries, directory)
    fill(net, shape, extra_positives, rng)
    times = time_layers(net, indices, repeats, clock=clock)
    del net
    if with_seed:
        seed_entries = [(label, "Python", ("multi_hot",), params, module, layer)
                        for label, module, layer, params, _ in SEED_LAYERS]
        seed_net, seed_indices = build_net(shape, seed_entries, directory)
        fill(seed_net, shape, extra_positives, rng)
        times.update(time_layers(seed_net, seed_indices, seed_repeats, warmup=0, clock=clock))
        del seed_net
    references = {label: ref for label, *_, ref in LAYERS + SEED_LAYERS}
    elements = int(np.prod(shape))
    rows = []
    for label, samples in times.items():
        median = statistics.median(samples)
        ref = references[label]
        if ref is None:
            ratio = None
        elif label.startswith("seed"):  # few repetitions: compare with our layer's median
            ratio = median / statistics.median(times[ref])
        else:  # paired: both measured within each repetition
            ratio = statistics.median(a / b for a, b in zip(samples, times[ref]))
        memory = None
        if with_memory and not label.startswith("seed"):
            entry = next(e for e in entries if e[0] == label)
            if entry[1] not in ("SigmoidCrossEntropyLoss", "SoftmaxWithLoss"):
                memory = peak_memory(shape, entry, extra_positives, directory)
        rows.append(dict(case=key, layer=label, ms=median * 1e3, ns=median * 1e9 / elements,
                         ratio=ratio, ref=ref, memory=memory, blob_bytes=elements * 4, repeats=len(samples)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 repetition (a smoke test)")
    parser.add_argument("--repeats", type=int, help="repetitions per layer (default per case)")
    parser.add_argument("--seed-repeats", type=int, default=3, help="repetitions of the loop baselines")
    parser.add_argument("--cases", default="a,b,c", help="comma-separated case keys: a, b, c")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc measurement")
    args = parser.parse_args(argv)
    clock = time.perf_counter
    caffe.set_mode_cpu()
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {sorted(CASES)}")

    print(f"# Loss layers, forward + backward, TRAIN phase, wall clock; {machine()}")
    rows, floors = [], {}
    with tempfile.TemporaryDirectory() as directory:
        for key in keys:
            title, shape, repeats, extra = CASES[key]
            if args.quick:
                shape, repeats = QUICK_SHAPES[key], 1
                title = f"{'x'.join(map(str, shape))} (quick)"
            repeats = args.repeats or repeats
            rows += run_case(key, shape, repeats, extra, with_seed=(key == "a"),
                             seed_repeats=1 if args.quick else args.seed_repeats,
                             with_memory=not args.no_memory, directory=directory, clock=clock)
            if key in ("a", "b"):
                floors[key] = floor_lines(shape, 1 if args.quick else max(5, repeats), clock)
            print(f"# case {key}: {title}, {int(np.prod(shape))} elements, {repeats} repetitions "
                  f"(medians)")
    print()
    print("| case | layer | ms | ns/element | ratio | vs | peak extra memory |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3g}x"
        memory = "" if r["memory"] is None else f"{r['memory']:.2f}x ({_bytes(r['memory'] * r['blob_bytes'])})"
        print(f"| {r['case']} | {r['layer']} | {r['ms']:.3f} | {r['ns']:.2f} | {ratio} | {r['ref'] or ''} | {memory} |")
    for key, lines in floors.items():
        elements = int(np.prod(QUICK_SHAPES[key] if args.quick else CASES[key][1]))
        for name, seconds in lines.items():
            print(f"| {key} | {name} | {seconds * 1e3:.3f} | {seconds * 1e9 / elements:.2f} | | | |")
    print()
    if args.quick:
        print("targets: not checked with --quick (the shapes are too small to mean anything)")
        return 0
    by = {(r["case"], r["layer"]): r for r in rows}
    for case, ours, ref, sense, limit in TARGETS:
        row = by.get((case, ours))
        if row is None or row["ref"] != ref:
            continue
        met = row["ratio"] <= limit if sense == "at most" else row["ratio"] >= limit
        print(f"target ({case}) {ours} / {ref}: {row['ratio']:.3g}x, {sense} {limit:g}x: "
              f"{'met' if met else 'NOT met'}")
    for case in ("a", "b"):
        memory = [r["memory"] for r in rows if r["case"] == case and r["memory"] is not None]
        if memory:
            print(f"target ({case}) peak extra memory, worst of our layers: {max(memory):.2f}x the score blob, "
                  f"at most {MEMORY_LIMIT:g}x: {'met' if max(memory) <= MEMORY_LIMIT else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

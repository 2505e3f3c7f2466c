"""Tables and plots of the experiments, drawn from their results JSON only (``experiments/run.py``
writes it), so the committed docs can be redrawn from the committed results with one command.

The guide (docs/choosing-a-loss.md) holds each table between ``<!-- begin NAME -->`` and
``<!-- end NAME -->``; ``fill_guide`` rewrites those blocks and nothing else. Every figure is the
mean over the seeds with its sample standard deviation (``mean ± sd``).
"""
import math
import os
import re

import numpy as np

RESULTS_NAME = "choosing-a-loss.json"
GUIDE_NAME = "choosing-a-loss.md"
DOCS_PREFIX = "choosing-"
RANKED_VALIDATIONS = 4   # the ranking table shows the order at the last this many validations

# Lin et al. 2017, "Focal Loss for Dense Object Detection", COCO minival AP of RetinaNet
# (ResNet-50-FPN, 600 pixels): section 5.1 and Table 1a (alpha at gamma 0) / 1b (gamma, best alpha).
PAPER = {
    "ce_zero_bias": "diverges (§5.1)",
    "ce_prior": "30.2 (§5.1; 1a α .50)",
    "ce_a0.75": "31.1 (1a)",
    "focal_g0_a0.25": "10.8 (1a)",
    "focal_g0.5_a0.25": "32.9 (1b, with α .50)",
    "focal_g1_a0.25": "33.7 (1b)",
    "focal_g2_a0.25": "34.0 (1b)",
    "focal_g5_a0.25": "32.2 (1b)",
    "focal_g2_a0.5": "0.4 below α .25 (§5.1)",
    "focal_g2_a0.75": "not reported",
}
PAPER_GAMMA = {0: 31.1, 0.1: 31.4, 0.2: 31.9, 0.5: 32.9, 1: 33.7, 2: 34.0, 5: 32.2}   # Table 1b, best alpha each
PAPER_ALPHA_AT_GAMMA_0 = {0.25: 10.8, 0.5: 30.2, 0.75: 31.1}                        # Table 1a (part)


# ---------------------------------------------------------------- figures

def _finished(runs):
    return [r for r in runs if not r.get("diverged")]


def stats(values):
    """(mean, sample sd or None, n) of the finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), sd, len(values)


def cell(values, digits=3, total=None):
    """``0.912 ± 0.004``; the count of seeds when some are missing (diverged)."""
    mean, sd, n = stats(values)
    total = len(values) if total is None else total
    if n == 0:
        return "diverged" if total else "n/a"
    text = f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")
    return text if n == total else f"{text} ({n} of {total} seeds)"


def by_variant(experiment):
    runs = {}
    for run in experiment["runs"]:
        runs.setdefault(run["variant"], []).append(run)
    return runs


def test_values(runs, key):
    return [r["test"][key] if not r.get("diverged") else None for r in runs]


def settings_text(variant, skip=()):
    shown = {k: v for k, v in variant["options"].items() if k not in skip}
    return ", ".join(f"{k} {v}" for k, v in shown.items()) or "defaults"


def diverged_note(runs):
    bad = [r for r in runs if r.get("diverged")]
    if not bad:
        return ""
    iters = ", ".join(str(r["diverged"]["iter"]) for r in bad)
    return f"; {len(bad)} of {len(runs)} seeds diverged (iteration {iters})"


def mean_curve(runs):
    """{iteration: (mean, min, max)} of the validation AP over the runs that reached it."""
    points = {}
    for run in runs:
        for point in run["curve"]:
            points.setdefault(point["iter"], []).append(point["val_ap"])
    return {it: (float(np.mean(v)), float(np.min(v)), float(np.max(v))) for it, v in sorted(points.items())}


def ranking(experiment):
    """The validation iterations shown and ``{variant: [rank at each]}`` by mean validation AP
    (1 = best; None for a variant whose runs all diverged before that iteration)."""
    runs = by_variant(experiment)
    curves = {name: mean_curve(_finished(r)) for name, r in runs.items()}
    iters = sorted({it for c in curves.values() for it in c})[-RANKED_VALIDATIONS:]
    ranks = {name: [] for name in runs}
    for it in iters:
        present = sorted((-c[it][0], name) for name, c in curves.items() if it in c)
        order = {name: k + 1 for k, (_, name) in enumerate(present)}
        for name in runs:
            ranks[name].append(order.get(name))
    return iters, ranks


# ---------------------------------------------------------------- tables

def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


MULTILABEL_HEADER = ["variant", "loss layer: settings", "test mAP", "macro F1, calibrated", "macro F1 at 0.5",
                     "rare AP (7, 8, 9)", "test mAP per seed", "final loss", "time per run"]
DENSE_HEADER = ["variant", "settings", "bias init", "AP over cells", "macro F1, calibrated", "macro F1 at 0.5",
                "AP per seed", "paper: COCO AP (Table 1)"]


def per_seed(runs):
    """``0.888 / 0.248 / 0.806``: the test AP of each seed, in seed order."""
    return " / ".join("diverged" if r.get("diverged") else f"{r['test']['ap']:.3f}"
                      for r in sorted(runs, key=lambda r: r["seed"]))


def multilabel_table(experiment):
    runs = by_variant(experiment)
    rows = []
    for v in experiment["variants"]:
        r = runs[v["name"]]
        rows.append([v["name"], f"{v['layer']}: {settings_text(v)}", cell(test_values(r, "ap")),
                     cell(test_values(r, "macro_f1")), cell(test_values(r, "macro_f1_at_0.5")),
                     cell(test_values(r, "rare_ap")), per_seed(r), cell([x["final_loss"] for x in _finished(r)], 4),
                     f"{stats([x['seconds'] for x in r])[0]:.0f} s"])
    return _table(MULTILABEL_HEADER, rows)


def dense_table(experiment):
    runs = by_variant(experiment)
    rows = []
    for v in experiment["variants"]:
        r = runs[v["name"]]
        rows.append([v["name"], settings_text(v, skip=("normalization",)), v["init"],
                     cell(test_values(r, "ap")) + diverged_note(r), cell(test_values(r, "macro_f1")),
                     cell(test_values(r, "macro_f1_at_0.5")), per_seed(r), PAPER.get(v["name"], "")])
    return _table(DENSE_HEADER, rows)


def ranking_table(experiment):
    iters, ranks = ranking(experiment)
    runs = by_variant(experiment)
    header = ["variant"] + [f"rank at {it}" for it in iters] + [f"validation {experiment['metric']} at {iters[-1]}"
                                                                if iters else "validation"]
    rows = []
    final = {name: mean_curve(_finished(r)).get(iters[-1]) if iters else None for name, r in runs.items()}
    order = sorted(runs, key=lambda name: (ranks[name][-1] is None, ranks[name][-1] or 0))
    for name in order:
        shown = [str(k) if k is not None else "–" for k in ranks[name]]
        value = final[name]
        rows.append([name] + shown + [f"{value[0]:.3f} ({value[1]:.3f}–{value[2]:.3f})" if value else "diverged"])
    return _table(header, rows)


def setting_line(name, experiment):
    s = experiment["setting"]
    sched = s["schedule"]
    sizes = s["sizes"]
    return (f"{name}: {sizes[0]} train / {sizes[1]} validation / {sizes[2]} test canvases of {s['canvas']}x{s['canvas']} "
            f"pixels ({100 * s['positive_fraction']:.2f}% of the training targets positive); {sched['max_iter']} SGD "
            f"iterations of {sched['batch_size']} canvases, base_lr {sched['base_lr']} falling linearly to 0, momentum "
            f"0.9, weight_decay {sched['weight_decay']}; seeds {', '.join(map(str, s['seeds']))}.")


def machine_line(results):
    m = results["machine"]
    quick = " (--quick: a smoke run, not figures to read)" if results.get("quick") else ""
    return (f"Measured on {m['nproc']} CPU cores ({m['cpu']}), numpy {m['numpy']}, Python {m['python']}, one "
            f"OpenBLAS thread; the run took {results['minutes']:.{0 if results['minutes'] >= 10 else 1}f} "
            f"minutes{quick}.")


def blocks(results):
    """``{block name: markdown}``: what the guide shows between its markers."""
    out = {"machine": machine_line(results)}
    experiments = results["experiments"]
    if "multilabel" in experiments:
        e = experiments["multilabel"]
        out["multilabel-setting"] = setting_line("Multi-label", e)
        out["multilabel"] = multilabel_table(e)
        out["multilabel-ranking"] = ranking_table(e)
    if "dense" in experiments:
        e = experiments["dense"]
        out["dense-setting"] = setting_line("Dense", e)
        out["dense"] = dense_table(e)
        out["dense-ranking"] = ranking_table(e)
    return out


def tables_markdown(results):
    """Every block, one after the other, between the guide's markers (tables.md)."""
    return "\n\n".join(f"<!-- begin {name} -->\n{text}\n<!-- end {name} -->" for name, text in blocks(results).items()) + "\n"


BLOCK = re.compile(r"(<!-- begin (?P<name>[\w-]+) -->\n)(?P<body>.*?)(\n<!-- end (?P=name) -->)", re.S)


def guide_blocks(text):
    """``{block name: markdown}`` as the guide holds them."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def fill_guide(text, results):
    """The guide with each block replaced by what ``blocks(results)`` draws; ``ValueError`` when the
    guide lacks a block the results have, or has one they lack."""
    new = blocks(results)
    have = guide_blocks(text)
    if set(have) != set(new):
        raise ValueError(f"the guide's blocks ({', '.join(sorted(have)) or 'none'}) are not the results' "
                         f"({', '.join(sorted(new))}): add or remove the '<!-- begin NAME -->' and "
                         f"'<!-- end NAME -->' markers")
    return BLOCK.sub(lambda m: m.group(1) + new[m["name"]] + m.group(4), text)


# ---------------------------------------------------------------- plots

DENSE_GROUPS = (
    ("Initialisation and alpha at gamma 0",
     ("ce_zero_bias", "ce_prior", "ce_a0.75", "focal_g0_a0.25")),
    ("Focal loss: gamma at alpha 0.25, alpha at gamma 2",
     ("focal_g0.5_a0.25", "focal_g1_a0.25", "focal_g2_a0.25", "focal_g5_a0.25", "focal_g2_a0.5", "focal_g2_a0.75")),
)


def plot_names(results):
    names = [f"{name}-curves.png" for name in results["experiments"]]
    if "dense" in results["experiments"]:
        names.append("dense-sweep.png")
    return names


def _save(figure, path):
    from caffe_layers.files import save_figure
    save_figure(figure, path, format="png", metadata={"Software": None})  # no version string: same bytes each run


def _curves(axis, experiment, names, title):
    """Per variant: its mean validation curve (thick) and each seed's (thin), in one colour."""
    runs = by_variant(experiment)
    for k, name in enumerate(names):
        color = f"C{k % 10}"
        curve = mean_curve(_finished(runs[name]))
        if not curve:
            axis.plot([], [], color=color, label=f"{name} (diverged)")
            continue
        for run in _finished(runs[name]):
            axis.plot([p["iter"] for p in run["curve"]], [p["val_ap"] for p in run["curve"]], "-", color=color,
                      lw=0.8, alpha=0.35)
        axis.plot(list(curve), [v[0] for v in curve.values()], "o-", ms=3, lw=2, color=color, label=name)
    axis.set(title=title, xlabel="iteration", ylabel=f"validation {experiment['metric']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="best")


def write_plots(results, folder, prefix=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    experiments = results["experiments"]
    if "multilabel" in experiments:
        e = experiments["multilabel"]
        figure, axis = plt.subplots(figsize=(7, 4.5))
        _curves(axis, e, [v["name"] for v in e["variants"]],
                "Multi-label: validation mAP (thick: mean over seeds; thin: each seed)")
        figure.tight_layout()
        _save(figure, os.path.join(folder, f"{prefix}multilabel-curves.png"))
    if "dense" in experiments:
        e = experiments["dense"]
        names = {v["name"] for v in e["variants"]}
        figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for axis, (title, group) in zip(axes, DENSE_GROUPS):
            _curves(axis, e, [n for n in group if n in names], title)
        figure.suptitle("Dense: validation AP over cells (thick: mean over seeds; thin: each seed)")
        figure.tight_layout()
        _save(figure, os.path.join(folder, f"{prefix}dense-curves.png"))
        _sweep_plot(e, os.path.join(folder, f"{prefix}dense-sweep.png"))


def _sweep_plot(experiment, path):
    import matplotlib.pyplot as plt
    runs = by_variant(experiment)

    def ours(name):
        """(mean, [each seed's test AP]) of a variant, or (None, []) when none finished."""
        values = [v for v in test_values(runs.get(name, []), "ap") if v is not None]
        return (float(np.mean(values)) if values else None), values

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    gammas = [(0, "focal_g0_a0.25"), (0.5, "focal_g0.5_a0.25"), (1, "focal_g1_a0.25"), (2, "focal_g2_a0.25"),
              (5, "focal_g5_a0.25")]
    alphas_g2 = [(0.25, "focal_g2_a0.25"), (0.5, "focal_g2_a0.5"), (0.75, "focal_g2_a0.75")]
    alphas_g0 = [(0.25, "focal_g0_a0.25"), (0.5, "ce_prior"), (0.75, "ce_a0.75")]
    panels = ((axes[0], "gamma", [("ours, alpha 0.25", gammas, "C0")], PAPER_GAMMA, "paper Table 1b (best alpha)"),
              (axes[1], "alpha", [("ours, gamma 2", alphas_g2, "C0"), ("ours, gamma 0 (0.5: no alpha)", alphas_g0, "C2")],
               PAPER_ALPHA_AT_GAMMA_0, "paper Table 1a (gamma 0)"))
    for axis, key, series, paper, paper_label in panels:
        for label, points, color in series:
            kept = [(x, *ours(name)) for x, name in points if ours(name)[0] is not None]
            if kept:
                axis.plot([x for x, _, _ in kept], [mean for _, mean, _ in kept], "o-", color=color, lw=2,
                          label=f"{label}: mean")
                seeds_x = [x for x, _, values in kept for _ in values]
                seeds_y = [v for _, _, values in kept for v in values]
                axis.plot(seeds_x, seeds_y, "x", color=color, alpha=0.6, label=f"{label}: each seed")
        axis.set(xlabel=key, ylabel="test AP over cells (ours)", title=f"AP against {key}", ylim=(-0.03, 1.03))
        axis.grid(alpha=0.3)
        twin = axis.twinx()
        twin.plot(list(paper), list(paper.values()), "s--", color="C3", label=paper_label)
        twin.set_ylabel("COCO AP (paper)", color="C3")
        handles = axis.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        axis.legend(handles[0] + more[0], handles[1] + more[1], fontsize="small", loc="best")
    figure.tight_layout()
    _save(figure, path)

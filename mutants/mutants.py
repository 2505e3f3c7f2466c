"""The curated mutants of ``make mutants`` (run by ``scripts/mutants.py``; see docs/mutants.md).

Each mutant is a small, realistic bug: in ``file``, the text ``old`` (which must occur exactly
once there) replaced by ``new``; ``bug`` says in one line what a programmer would have got
wrong; ``tests`` are the test files that must catch it, fastest first (or one test of a slow
file, ``file::test_function``); they are run with ``pytest -x``. ``tests/test_mutants_list.py`` checks in CI that every mutant still applies, so this
list cannot rot silently as the code changes: when a snippet no longer occurs, rewrite the
mutant for today's code rather than dropping it.

A new kernel, option or check arrives with its mutants here, and ``make mutants`` must report
every one of them killed.
"""
from collections import namedtuple
from pathlib import Path

Mutant = namedtuple("Mutant", "name file old new bug tests")

FOCAL = "caffe_layers/focal.py"
SOFTMAX = "caffe_layers/multilabel_softmax.py"
BLOCKS = "caffe_layers/blocks.py"
PARAMS = "caffe_layers/params.py"
CONFIG = "caffe_layers/config.py"
LAYERS = "caffe_layers/layers.py"
ASYMMETRIC = "caffe_layers/asymmetric.py"
METRICS_LAYER = "caffe_layers/metrics_layer.py"
NETSPEC = "caffe_layers/netspec.py"
METRICS = "caffe_layers/metrics.py"
DECODING = "caffe_layers/decoding.py"
CLASS_WEIGHTS = "caffe_layers/class_weights.py"
CLI = "caffe_layers/cli.py"
TOOL_NET = "caffe_layers/tool/net.py"
TOOL_DATA = "caffe_layers/tool/data.py"

EDGE = "tests/test_edge_cases.py"
ASYMMETRIC_MATH = "tests/test_asymmetric_math.py"
ASYMMETRIC_NET = "tests/test_asymmetric_net.py"
FOCAL_MATH = "tests/test_focal_math.py"
SOFTMAX_MATH = "tests/test_softmax_math.py"
LAYERS_NET = "tests/test_layers_net.py"
PARAMS_TESTS = "tests/test_params.py"
LAYER_MISTAKES = "tests/test_layer_mistakes.py"
ERRORS = "tests/test_errors.py"
METRICS_LAYER_TESTS = "tests/test_metrics_layer.py"
NETSPEC_TESTS = "tests/test_netspec.py"
KERNEL_EDGES = "tests/test_kernel_edges.py"
METRICS_TESTS = "tests/test_metrics.py"
DECODING_TESTS = "tests/test_decoding.py"
CLASS_WEIGHTS_TESTS = "tests/test_class_weights.py"
CLI_TOOL = "tests/test_cli_tool.py"
CLI_OPTIONS = "tests/test_cli_mistakes.py::test_option_mistakes_are_usage_errors"
CLI_OUTPUTS = "tests/test_cli_mistakes.py::test_outputs_never_overwrite_inputs"
CLI_SQUASHING = "tests/test_cli_mistakes.py::test_an_explicit_second_squashing_is_an_error"


def M(name, file, old, new, bug, *tests):
    return Mutant(name, file, old, new, bug, tests)


MUTANTS = [
    # ------------------------------------------------------------ the focal kernel
    M("focal-log1p-rounding", FOCAL,
      "    np.log(one_plus_e, out=out)\n"
      "    return np.add(out, np.subtract(e, np.subtract(one_plus_e, 1, out=one_plus_e), out=one_plus_e), out=out)\n",
      "    return np.log(one_plus_e, out=out)\n",
      "log(1 + e) without the rounding correction of 1 + e: 0 for tiny e (x << 0, float32)",
      FOCAL_MATH, KERNEL_EDGES),
    M("focal-scratch-count", FOCAL,
      "count = product + (alpha is not None or element_weights.needs_product)",
      "count = product + element_weights.needs_product",
      "the scratch count forgets the array alpha_t is written into",
      FOCAL_MATH, EDGE),
    M("focal-gamma-factor-dropped", FOCAL,
      "    if gamma != 1:\n"
      "        np.multiply(e, gamma, out=e)\n",
      "",
      "the factor gamma of the focusing term's derivative dropped",
      FOCAL_MATH),
    M("focal-gradient-sign", FOCAL,
      "g = np.multiply(np.subtract(p_neg, p_pos, out=p_neg), q_gamma, out=p_neg)",
      "g = np.multiply(np.subtract(p_pos, p_neg, out=p_neg), q_gamma, out=p_neg)",
      "the q^gamma (p - t) term of the gradient with the wrong sign",
      FOCAL_MATH),
    M("focal-weights-not-on-gradient", FOCAL,
      "    if scale is not None:\n"
      "        np.multiply(g, scale, out=g)\n",
      "",
      "weights (and the ignore mask) on the loss but not on the (p - t) term of the gradient",
      FOCAL_MATH),
    M("focal-ce-mask-not-on-gradient", FOCAL,
      "            np.subtract(p, t, out=grad)\n"
      "            if scale is not None:\n"
      "                np.multiply(grad, scale, out=grad)\n",
      "            np.subtract(p, t, out=grad)\n",
      "gamma 0: weights and ignore mask applied to the loss but not to the gradient",
      FOCAL_MATH, LAYERS_NET),
    M("focal-alpha-swapped", FOCAL,
      "alpha_base, alpha_slope = 1 - alpha, 2 * alpha - 1",
      "alpha_base, alpha_slope = alpha, 1 - 2 * alpha",
      "alpha weighs the negatives and 1 - alpha the positives",
      FOCAL_MATH),
    M("focal-positives-count-ignored", FOCAL,
      "        positives += float(np.add.reduce(t, axis=None))",
      "        positives += float(np.add.reduce(t_all[n, c, s], axis=None))",
      "'positives' summed over the raw targets, ignore_label entries included",
      FOCAL_MATH, LAYERS_NET, EDGE),
    M("focal-gamma2-scratch-alias", FOCAL,
      "q_gamma = np.multiply(q, q, out=is_pos)",
      "q_gamma = np.multiply(q, q, out=q)",
      "gamma 2: q^2 written over q, which the gradient still needs",
      FOCAL_MATH),
    M("focal-fractional-gamma-no-floor", FOCAL,
      "np.maximum(q, np.finfo(q.dtype).tiny, out=q)",
      "q",
      "fractional gamma: q^gamma / q without flooring q, 0/0 = NaN at saturation",
      FOCAL_MATH, EDGE),
    M("focal-prob-of-abs", FOCAL,
      "np.copyto(prob, p)",
      "np.copyto(prob, r)",
      "the probabilities top gets sigmoid(|x|) instead of sigmoid(x)",
      FOCAL_MATH, LAYERS_NET),
    M("focal-one-minus-p-cancels", FOCAL,
      "one_minus_p = np.multiply(np.maximum(e, np.subtract(1, is_pos, out=tmp), out=tmp), r, out=tmp)",
      "one_minus_p = np.subtract(1, p, out=tmp)",
      "1 - p computed by subtraction: 0 at saturation, so q^gamma and its gradient vanish",
      FOCAL_MATH, EDGE),

    # ------------------------------------------------------------ the asymmetric kernel
    M("asymmetric-sparse-nonzeros-twice", ASYMMETRIC,
      "loss = -float(np.add.reduce(loss_neg, axis=None)) + float(np.add.reduce(loss_neg.reshape(-1)[skip]))",
      "loss = -float(np.add.reduce(loss_neg, axis=None))",
      "sparse walk: the non-zero targets' loss as negatives not taken back out, so counted twice",
      ASYMMETRIC_MATH),
    M("asymmetric-sparse-offset", ASYMMETRIC,
      "sparse.append(nonzero + ((n.start * ncs[1] + c.start) * ncs[2] + s.start))",
      "sparse.append(nonzero + (n.start * ncs[1] + c.start) * ncs[2])",
      "sparse walk: a block's flat offset forgets where its piece of a long row starts",
      ASYMMETRIC_MATH),
    M("asymmetric-sparse-positives", ASYMMETRIC,
      "    return loss, float(np.add.reduce(t, axis=None))\n",
      "    return loss, 0.0\n",
      "sparse walk: the targets of the non-zeros left out of 'positives'",
      ASYMMETRIC_MATH),
    M("asymmetric-sparse-gradient-unweighted", ASYMMETRIC,
      "        if scale is None:\n"
      "            np.copyto(grad, neg_grad)\n"
      "        else:\n"
      "            np.multiply(neg_grad, scale, out=grad)\n",
      "        np.copyto(grad, neg_grad)\n",
      "sparse walk: weights on the loss but not on the negatives' gradient",
      ASYMMETRIC_MATH),
    M("asymmetric-detach-ignored-for-positives", ASYMMETRIC,
      "if gp != 0 and not o.detach:",
      "if gp != 0:",
      "detach_focal_weight still differentiates (1 - p)^gamma_pos",
      ASYMMETRIC_MATH),
    M("asymmetric-margin-not-floored", ASYMMETRIC,
      "        np.maximum(p_m, np.multiply(p_m, 0, out=spare_a), out=p_m)\n",
      "",
      "p - m not floored at 0: negatives below the margin get a loss (even gamma_neg)",
      ASYMMETRIC_MATH),
    M("asymmetric-gamma4-below-power", ASYMMETRIC,
      "return focus, np.multiply(square, p_m, out=square)",
      "return focus, square",
      "gamma_neg 4: p_m^(gamma_neg - 1) taken as p_m^2",
      ASYMMETRIC_MATH),
    M("asymmetric-log-one-minus-p-cancels", ASYMMETRIC,
      "log_a = np.subtract(np.subtract(x_neg_part, x, out=log_a_array), log1p_e, out=log_a_array)",
      "log_a = np.subtract(np.subtract(x_neg_part, log1p_e, out=log_a_array), x, out=log_a_array)",
      "no margin: log(1 - p) taken as log p - x, which cancels where it is tiny",
      ASYMMETRIC_MATH),
    M("asymmetric-negative-gradient-sign", ASYMMETRIC,
      "np.multiply(neg_grad, -gn, out=neg_grad)",
      "np.multiply(neg_grad, gn, out=neg_grad)",
      "no margin: the gamma_neg term of the negatives' gradient with the wrong sign",
      ASYMMETRIC_MATH),

    # ------------------------------------------------------------ the blocked walk
    M("blocks-flat-last-piece", BLOCKS,
      "for s0 in range(0, s, block_elements):",
      "for s0 in range(0, s - block_elements + 1, block_elements):",
      "flat_blocks: the last partial block of a long row skipped",
      FOCAL_MATH, EDGE),
    M("blocks-slices-last-piece", BLOCKS,
      "for s0 in range(0, s, step):",
      "for s0 in range(0, s - step + 1, step):",
      "block_slices: the last partial piece of a big sample skipped",
      SOFTMAX_MATH, EDGE),
    M("blocks-slices-last-big-sample", BLOCKS,
      "    for n0 in range(n):\n"
      "        for s0 in range(0, s, step):",
      "    for n0 in range(n - 1):\n"
      "        for s0 in range(0, s, step):",
      "block_slices: the last of several big samples skipped",
      SOFTMAX_MATH, EDGE),
    M("blocks-flat-samples-short", BLOCKS,
      "yield slice(n0, min(n, n0 + step)), slice(0, c), slice(0, s)",
      "yield slice(n0, min(n, n0 + step - 1)), slice(0, c), slice(0, s)",
      "flat_blocks: each group of whole samples one sample short",
      FOCAL_MATH, EDGE),
    M("blocks-flat-last-class", BLOCKS,
      "yield slice(n0, n0 + 1), slice(c0, min(c, c0 + step)), slice(0, s)",
      "yield slice(n0, n0 + 1), slice(c0, min(c - 1, c0 + step)), slice(0, s)",
      "flat_blocks: the last class of a sample cut into class groups skipped",
      FOCAL_MATH, EDGE),
    M("blocks-element-weights-by-size", BLOCKS,
      "(self.weights[n] if self.per_sample else self.weights[n, c, s])",
      "(self.weights[n] if self.weights.shape[2] == 1 else self.weights[n, c, s])",
      "(N, C) per-element weights taken per sample when S is 1: rows longer than a block crash",
      FOCAL_MATH, KERNEL_EDGES, LAYER_MISTAKES, EDGE),
    M("blocks-valid-counts-ignored", BLOCKS,
      "return np.multiply(t, kept, out=out), kept, int(np.count_nonzero(kept))",
      "return np.multiply(t, kept, out=out), kept, t.size",
      "'valid' counts the ignored elements too",
      FOCAL_MATH, LAYERS_NET),
    M("blocks-ignored-targets-kept", BLOCKS,
      "return np.multiply(t, kept, out=out), kept, int(np.count_nonzero(kept))",
      "return t, kept, int(np.count_nonzero(kept))",
      "ignored targets masked out of the weights but left as they are (-1) in the math",
      FOCAL_MATH, ASYMMETRIC_MATH),
    M("blocks-class-weights-not-sliced", BLOCKS,
      "None if self.class_weights is None else self.class_weights[:, c],",
      "None if self.class_weights is None else self.class_weights,",
      "class weights not sliced with a block that holds part of the classes",
      FOCAL_MATH, KERNEL_EDGES, EDGE),
    M("blocks-flat-index-class", BLOCKS,
      "scale = self.class_weights.reshape(-1)[flat // inner % num_classes]",
      "scale = self.class_weights.reshape(-1)[flat % num_classes]",
      "the class of a flat index taken as flat mod C, forgetting the spatial axes",
      ASYMMETRIC_MATH),
    M("blocks-flat-index-sample", BLOCKS,
      "w = self.weights.reshape(-1)[flat // (num_classes * inner)]",
      "w = self.weights.reshape(-1)[flat // num_classes]",
      "the sample of a flat index taken as flat div C, forgetting the spatial axes",
      ASYMMETRIC_MATH),
    M("blocks-ncs-inner", BLOCKS,
      "for d in shape[axis + 1:]:",
      "for d in shape[axis + 2:]:",
      "as_ncs: the first spatial axis left out of S",
      FOCAL_MATH, SOFTMAX_MATH),

    # ------------------------------------------------------------ the multi-label softmax kernel
    M("softmax-sparse-forgets-class-weights", SOFTMAX,
      "        if o.class_weights is not None:\n"
      "            t_nz = t_nz * o.class_weights[0, c_i, 0]\n",
      "",
      "sparse multi-hot targets: class_weights forgotten",
      SOFTMAX_MATH, EDGE),
    M("softmax-no-shift-overflows", SOFTMAX,
      "(float(np.min(x_max)) >= -30.0 and float(np.max(x_max)) <= 60.0)",
      "float(np.min(x_max)) >= -30.0",
      "exp(x) taken without the max shift whatever the maximum: overflows for large scores",
      SOFTMAX_MATH, EDGE),
    M("softmax-no-shift-underflows", SOFTMAX,
      "(float(np.min(x_max)) >= -30.0 and float(np.max(x_max)) <= 60.0)",
      "float(np.max(x_max)) <= 60.0",
      "exp(x) taken without the max shift whatever the minimum: underflows for very negative scores",
      SOFTMAX_MATH, EDGE),
    M("softmax-index-smoothing-gradient", SOFTMAX,
      "np.put_along_axis(grad, labels, at - o.keep * v, axis=1)",
      "np.put_along_axis(grad, labels, at - v, axis=1)",
      "class-index targets: the label's gradient ignores label smoothing",
      SOFTMAX_MATH),
    M("softmax-index-ignored-still-weigh", SOFTMAX,
      "        has_target &= kept\n"
      "        np.multiply(v, kept, out=v)\n",
      "        has_target &= kept\n",
      "ignored positions dropped from the count but still add loss and gradient (as class 0)",
      SOFTMAX_MATH, LAYERS_NET),
    M("softmax-count-is-sum", SOFTMAX,
      "        np.copyto(k, count)",
      "        np.copyto(k, mass)",
      "target_normalization count divides by the sum of the targets",
      SOFTMAX_MATH),
    M("softmax-valid-every-position", SOFTMAX,
      "valid = int(np.count_nonzero(mass))",
      "valid = mass.size",
      "positions without a positive target counted as valid",
      SOFTMAX_MATH, LAYERS_NET),
    M("softmax-sparse-kl-smoothing", SOFTMAX,
      "per_position += (o.num_classes - count) * _x_log_x(q0)",
      "per_position += o.num_classes * _x_log_x(q0)",
      "sparse targets, kl with smoothing: q0 log q0 counted at every class, positives included",
      SOFTMAX_MATH, EDGE),
    M("softmax-sparse-smoothing-unweighted", SOFTMAX,
      "                np.subtract(np.multiply(e, scaled, out=e), (o.spread * mass) if w is None else (o.spread * mass * w),\n"
      "                            out=grad)",
      "                np.subtract(np.multiply(e, scaled, out=e), o.spread * mass,\n"
      "                            out=grad)",
      "sparse targets with smoothing: the smoothing part of the gradient not weighted",
      SOFTMAX_MATH, EDGE),
    M("softmax-dense-target-gradient-unweighted", SOFTMAX,
      "            np.multiply(k, w, out=k)\n",
      "",
      "dense targets: the -q part of the gradient not multiplied by the position weight",
      SOFTMAX_MATH),
    M("softmax-xlogx-no-floor", SOFTMAX,
      "log_q = np.log(np.maximum(q, np.finfo(q.dtype).tiny, out=out), out=out)",
      "log_q = np.log(q, out=out)",
      "kl: 0 log 0 evaluated as 0 * -inf = NaN",
      SOFTMAX_MATH),
    M("softmax-sparse-position-stride", SOFTMAX,
      "return where, n_i, c_i, s_i, n_i * s_b + s_i",
      "return where, n_i, c_i, s_i, n_i + s_i",
      "sparse targets: the position index forgets the row stride of (N, C, S) blocks",
      SOFTMAX_MATH, EDGE),
    M("softmax-smoothing-over-c-minus-1", SOFTMAX,
      "self.spread = label_smoothing / num_classes",
      "self.spread = label_smoothing / (num_classes - 1)",
      "label smoothing spreads eps over C - 1 classes instead of C",
      SOFTMAX_MATH),
    M("softmax-index-sum-normalization", SOFTMAX,
      "        if o.target_normalization == \"sum\":  # q / sum(q): 1 at the label, or 0 if its weight is 0\n"
      "            np.greater(v, 0, out=v)\n",
      "",
      "class-index targets, target_normalization sum: q stays the class weight instead of 1",
      SOFTMAX_MATH, EDGE),
    M("softmax-index-gradient-unweighted", SOFTMAX,
      "        np.multiply(v, w, out=v)           # from here on v carries the position weight\n",
      "",
      "class-index targets: the position weight on the loss but not on the gradient",
      SOFTMAX_MATH, EDGE),

    # ------------------------------------------------------------ param_str and configs
    M("params-json-file-unchecked", PARAMS,
      "    if path is not None:\n"
      "        value = read_json_file(layer, key, path)\n",
      "    if path is not None:\n"
      "        return tuple(read_json_file(layer, key, path))\n",
      "a class_weights / alpha JSON file read but its list not validated",
      PARAMS_TESTS, LAYER_MISTAKES),
    M("params-duplicate-key-wins", PARAMS,
      "        if key in result:\n"
      "            raise _DuplicateKey(key)\n",
      "",
      "a key given twice in param_str: the last one silently wins",
      PARAMS_TESTS, LAYER_MISTAKES),
    M("params-alias-twice", PARAMS,
      "        if name in canonical:",
      "        if key in canonical:",
      "a key given under two spellings (gamma and focusing_parameter) not noticed",
      PARAMS_TESTS, EDGE),
    M("params-nan-accepted", PARAMS,
      "finite = is_number(value) and math.isfinite(value)",
      "finite = is_number(value)",
      "NaN and infinity accepted as numbers",
      PARAMS_TESTS),
    M("params-open-end-closed", PARAMS,
      "too_high = high is not None and (value >= high if high_open else value > high)",
      "too_high = high is not None and value > high",
      "an open upper end accepts its bound (label_smoothing 1, clip 1)",
      PARAMS_TESTS),
    M("params-fraction-as-integer", PARAMS,
      "integral = is_number(value) and float(value).is_integer() and abs(value) < 2 ** 63",
      "integral = is_number(value) and abs(value) < 2 ** 63",
      "a fractional ignore_label or axis (0.5) accepted and truncated",
      PARAMS_TESTS),
    M("params-class-balances-keys", PARAMS,
      "    if keys != expected:",
      "    if len(keys) != len(expected):",
      "class_balances keys not checked to be \"1\"..\"C\" (a gap or a 0 passes)",
      PARAMS_TESTS),
    M("config-ignore-label-one", CONFIG,
      "if config.get(\"ignore_label\") in (0, 1):",
      "if config.get(\"ignore_label\") == 0:",
      "ignore_label 1 accepted for sigmoid losses, ignoring every positive",
      PARAMS_TESTS, LAYER_MISTAKES),
    M("config-alpha-unbounded", CONFIG,
      "params.number(layer, \"alpha\", alpha, 0.0, 1.0) if params.is_number(alpha)",
      "params.number(layer, \"alpha\", alpha, 0.0) if params.is_number(alpha)",
      "a single alpha above 1 accepted",
      PARAMS_TESTS),
    M("config-gamma-uncapped", CONFIG,
      "    params.at_most(layer, key, gamma, MAX_GAMMA)\n",
      "",
      "a focusing exponent that overflows float32 accepted",
      PARAMS_TESTS, LAYER_MISTAKES),
    M("config-both-class-weight-spellings", CONFIG,
      "            if extra in raw and option in raw:\n"
      "                raise ValueError(f\"{layer}: {option!r} and its alias {extra!r} are both given; give one\")\n",
      "",
      "class_weights and class_balances both given: one silently wins",
      EDGE, PARAMS_TESTS, LAYER_MISTAKES),
    M("config-clip-one", CONFIG,
      "params.number(layer, \"clip\", raw[\"clip\"], 0.0, 1.0, high_open=True)",
      "params.number(layer, \"clip\", raw[\"clip\"], 0.0, 1.0)",
      "AsymmetricLoss accepts clip 1, which leaves every negative below the margin",
      EDGE, PARAMS_TESTS, ASYMMETRIC_NET),
    M("config-metrics-k-zero", CONFIG,
      "if k is None or k < 1:",
      "if k is None or k < 0:",
      "MultiLabelMetrics accepts k 0",
      METRICS_LAYER_TESTS),

    # ------------------------------------------------------------ the Caffe glue
    M("layers-normaliser-unguarded", LAYERS,
      "return sums.loss, float(max(1.0, self.normalizer_count(scores.shape, sums)))",
      "return sums.loss, float(self.normalizer_count(scores.shape, sums))",
      "the max(1, n) guard of the normaliser removed: 0 positives or valid divide by 0",
      LAYERS_NET, EDGE),
    M("layers-backward-ignores-loss-weight", LAYERS,
      "np.multiply(self._grad, top[0].diff.flat[0] / self._normalizer, out=bottom[0].diff)",
      "np.multiply(self._grad, 1.0 / self._normalizer, out=bottom[0].diff)",
      "backward ignores the top's diff (the loss_weight)",
      LAYERS_NET),
    M("layers-backward-not-normalised", LAYERS,
      "np.multiply(self._grad, top[0].diff.flat[0] / self._normalizer, out=bottom[0].diff)",
      "np.multiply(self._grad, top[0].diff.flat[0], out=bottom[0].diff)",
      "backward does not divide by forward's normaliser",
      LAYERS_NET),
    M("layers-full-normaliser-2d", LAYERS,
      "\"full\": math.prod(scores_shape)",
      "\"full\": scores_shape[0] * scores_shape[1]",
      "normalization full counts N x C, forgetting the spatial axes",
      LAYERS_NET),
    M("layers-softmax-batch-size-axis", LAYERS,
      "return {\"batch_size\": outer, \"full\": outer * inner",
      "return {\"batch_size\": scores_shape[0], \"full\": outer * inner",
      "softmax batch_size normaliser is N, not the product of the axes before 'axis'",
      LAYER_MISTAKES),
    M("layers-sigmoid-ignore-label-refused", LAYERS,
      "        if self.config.ignore_label is not None:\n"
      "            bad &= targets != self.config.ignore_label\n"
      "        if bad.any():\n"
      "            allowed = \"in [0, 1]\"",
      "        if bad.any():\n"
      "            allowed = \"in [0, 1]\"",
      "sigmoid targets equal to ignore_label refused as out of [0, 1]",
      LAYERS_NET),
    M("layers-targets-above-one", LAYERS,
      "bad = ~((targets >= 0) & (targets <= 1))",
      "bad = ~(targets >= 0)",
      "sigmoid targets above 1 accepted",
      ERRORS),
    M("layers-weights-infinite", LAYERS,
      "bad = ~(np.isfinite(weights) & (weights >= 0))",
      "bad = ~(weights >= 0)",
      "an infinite weight in bottom 2 accepted",
      EDGE),
    M("layers-label-diff-left", LAYERS,
      "            if propagate_down[i]:  # targets and weights get no gradient\n"
      "                bottom[i].diff[...] = 0\n",
      "            if propagate_down[i]:  # targets and weights get no gradient\n"
      "                pass\n",
      "backward leaves the targets' and weights' diff as it was instead of zeroing it",
      LAYERS_NET),
    M("layers-finite-check-inverted", LAYERS,
      "        if checking:\n            check_finite_scores(",
      "        if not checking:\n            check_finite_scores(",
      "the non-finite scores check runs only when check_finite is false",
      ERRORS),
    M("layers-overflowing-sum-is-not-nan", LAYERS,
      "return math.isfinite(float(np.add.reduce(array, axis=None))) or bool(np.isfinite(array).all())",
      "return math.isfinite(float(np.add.reduce(array, axis=None)))",
      "finite scores whose float32 sum overflows taken for non-finite scores",
      EDGE),
    M("layers-index-targets-fractional", LAYERS,
      "bad = ~((targets >= 0) & (targets < num_classes) & (targets == np.floor(targets)))",
      "bad = ~((targets >= 0) & (targets < num_classes))",
      "a fractional class index (1.5) accepted and truncated",
      EDGE, ERRORS),
    M("layers-softmax-dense-ignore-label", LAYERS,
      "        if not index and self.config.ignore_label is not None:\n",
      "        if False:\n",
      "MultiLabelSoftmaxLoss silently drops ignore_label with dense targets, where it means nothing",
      ERRORS),
    M("layers-no-loss-weight-warning", LAYERS,
      "if top[0].diff.flat[0] == 0:",
      "if top[0].diff.flat[0] < 0:",
      "the warning for a loss layer without loss_weight never printed",
      LAYER_MISTAKES),

    # ------------------------------------------------------------ the metrics layer and NetSpec
    M("metrics-layer-ap-keeps-ignored", METRICS_LAYER,
      "computed[\"mAP\"] = m.nan_mean(m.average_precision(probs, positive, valid))",
      "computed[\"mAP\"] = m.nan_mean(m.average_precision(probs, positive))",
      "mAP counts ignore_label entries as negatives",
      METRICS_LAYER_TESTS),
    M("metrics-layer-nan-top", METRICS_LAYER,
      "top[i].data[...] = 0.0 if np.isnan(value) else value",
      "top[i].data[...] = value",
      "an undefined metric (mAP without positives) written as NaN instead of 0",
      METRICS_LAYER_TESTS),
    M("metrics-layer-threshold-file-unused", METRICS_LAYER,
      "counts = m.f1_counts(apply_thresholds(probs, self._thresholds), positive, valid)",
      "counts = m.f1_counts(apply_thresholds(probs, 0.5), positive, valid)",
      "the F1s use 0.5 instead of the per-class thresholds file",
      METRICS_LAYER_TESTS),
    M("metrics-layer-at-k-keeps-ignored", METRICS_LAYER,
      "probs, positive, self.config.k, valid)",
      "probs, positive, self.config.k)",
      "precision@k and recall@k count ignore_label entries",
      METRICS_LAYER_TESTS),
    M("netspec-options-unchecked", NETSPEC,
      "    LAYERS[layer].config.from_param_str(text, layer)\n",
      "",
      "NetSpec helpers no longer check the options when the net is written",
      NETSPEC_TESTS),
    M("netspec-probabilities-weighted", NETSPEC,
      "[loss_weight] + [0] * (ntop - 1)",
      "[loss_weight] * ntop",
      "the probabilities top of a loss helper also gets the loss_weight",
      NETSPEC_TESTS),
    M("netspec-escapes-unquoted", NETSPEC,
      "if \"'\" in raw or \"\\\\\" in raw or not raw.isprintable():",
      "if \"'\" in raw:",
      "to_prototxt writes a param_str with backslashes in single quotes, unescaped",
      NETSPEC_TESTS, EDGE),

    # ------------------------------------------------------------ metrics, decoding, class weights
    M("metrics-ap-ties-one-by-one", METRICS,
      "last[:-1] = s[:-1] != s[1:]",
      "last[:-1] = True",
      "average precision: tied scores admitted one at a time instead of as one threshold",
      METRICS_TESTS),
    M("metrics-macro-f1-empty-class-zero", METRICS,
      "return nan_mean(_ratio(2 * tp, 2 * tp + fp + fn))",
      "return nan_mean(np.nan_to_num(_ratio(2 * tp, 2 * tp + fp + fn)))",
      "macro F1 counts a class with neither positives nor predictions as 0 instead of leaving it out",
      METRICS_TESTS),
    M("metrics-precision-at-k-over-k", METRICS,
      "precision = _ratio(hits, np.minimum(k, n_valid))",
      "precision = _ratio(hits, k)",
      "precision@k divides by k even when a sample has fewer valid classes",
      METRICS_TESTS),
    M("metrics-f1-counts-ignored-predictions", METRICS,
      "predicted = np.asarray(predicted, bool) & valid",
      "predicted = np.asarray(predicted, bool)",
      "F1 counts a prediction on an ignored entry as a false positive",
      METRICS_TESTS),
    M("metrics-evaluate-predicted-ignored", METRICS,
      "out[\"predicted\"] = np.sum(predicted & all_valid(labels, valid), axis=0)",
      "out[\"predicted\"] = np.sum(predicted, axis=0)",
      "evaluate's predictions per class count ignored entries",
      METRICS_TESTS),
    M("metrics-report-micro-pools-ignored", METRICS,
      "y, p = positive[valid], predicted[valid]",
      "y, p = positive.ravel(), predicted.ravel()",
      "the pooled (micro) figures of report include ignored entries",
      METRICS_TESTS),
    M("metrics-evaluate-ignore-label-one", METRICS,
      "if ignore_label is not None and ignore_label in (0, 1):",
      "if ignore_label is not None and ignore_label == 0:",
      "evaluate accepts ignore_label 1, which leaves out every positive",
      METRICS_TESTS, EDGE),
    M("decoding-precision-highest-threshold", DECODING,
      "best = int(reached[0])",
      "best = int(reached[-1])",
      "precision calibration takes the highest threshold reaching the target, not the lowest",
      DECODING_TESTS),
    M("decoding-unreachable-threshold-at-max", DECODING,
      "out.thresholds[c] = np.nextafter(s.max(), np.inf)",
      "out.thresholds[c] = s.max()",
      "precision never reached: the threshold is the highest score, so that sample is still predicted",
      DECODING_TESTS),
    M("decoding-mass-one-short", DECODING,
      "count = np.sum(cumulative < mass - MASS_TOLERANCE, axis=1) + 1",
      "count = np.sum(cumulative < mass - MASS_TOLERANCE, axis=1)",
      "cumulative mass stops one class before the one that reaches the level",
      DECODING_TESTS),
    M("decoding-mass-min-count-ignored", DECODING,
      "count = np.clip(count, min_count, min(max_count, num_classes))",
      "count = np.clip(count, 1, min(max_count, num_classes))",
      "cumulative mass ignores min_count",
      DECODING_TESTS),
    M("decoding-mass-tolerance-sign", DECODING,
      "cumulative < mass - MASS_TOLERANCE",
      "cumulative < mass + MASS_TOLERANCE",
      "the float32 rounding tolerance of the mass level applied the wrong way",
      DECODING_TESTS),
    M("decoding-top-k-lowest", DECODING,
      "order = np.argsort(-scores, axis=1, kind=\"stable\")[:, :k]",
      "order = np.argsort(scores, axis=1, kind=\"stable\")[:, :k]",
      "top-k picks the k lowest scores",
      DECODING_TESTS),
    M("decoding-threshold-strict", DECODING,
      "return np.asarray(scores) >= np.asarray(thresholds, dtype=np.float64)",
      "return np.asarray(scores) > np.asarray(thresholds, dtype=np.float64)",
      "a score equal to its class's threshold is not predicted",
      DECODING_TESTS, EDGE),
    M("decoding-softmax-over-samples", DECODING,
      "return softmax(scores, axis=1)",
      "return softmax(scores, axis=0)",
      "the softmax activation normalises over samples instead of classes",
      DECODING_TESTS),
    M("decoding-thresholds-count-unchecked", DECODING,
      "    if len(values) != num_classes:\n",
      "    if len(values) > num_classes:\n",
      "a thresholds file with fewer thresholds than classes accepted",
      DECODING_TESTS, EDGE),
    M("class-weights-alpha-swapped", CLASS_WEIGHTS,
      "return w_pos / (w_pos + w_neg)",
      "return w_neg / (w_pos + w_neg)",
      "alpha from counts weighs the negatives' share instead of the positives'",
      CLASS_WEIGHTS_TESTS),
    M("class-weights-sum-one", CLASS_WEIGHTS,
      "return w_pos / w_pos.mean()",
      "return w_pos / w_pos.sum()",
      "class weights scaled to sum 1 instead of mean 1",
      CLASS_WEIGHTS_TESTS),
    M("class-weights-negatives-not-floored", CLASS_WEIGHTS,
      "negatives = np.maximum(np.asarray(valid, dtype=np.float64) - positives, min_count)",
      "negatives = np.asarray(valid, dtype=np.float64) - positives",
      "min_count raises the positives but not the negatives (kind alpha)",
      CLASS_WEIGHTS_TESTS, EDGE),
    M("class-weights-effective-number-log1p", CLASS_WEIGHTS,
      "return (1.0 - beta) / -np.expm1(counts * np.log(beta))",
      "return (1.0 - beta) / -np.expm1(counts * np.log1p(-beta))",
      "effective number: 1 - (1 - beta)^n instead of 1 - beta^n",
      CLASS_WEIGHTS_TESTS),
    M("class-weights-ignore-label-refused", CLASS_WEIGHTS,
      "bad = valid & (labels != 0) & (labels != 1)",
      "bad = (labels != 0) & (labels != 1)",
      "label counts refuse the ignore_label entries they should leave out",
      CLASS_WEIGHTS_TESTS),
    M("class-weights-valid-is-n", CLASS_WEIGHTS,
      "return np.sum((labels == 1) & valid, axis=0), np.sum(valid, axis=0)",
      "return np.sum((labels == 1) & valid, axis=0), np.full(labels.shape[1], len(labels))",
      "label counts: every sample counted as labelled, ignored entries included",
      CLASS_WEIGHTS_TESTS),

    # ------------------------------------------------------------ the caffe-layers command
    M("cli-two-decision-rules", CLI,
      "    if len(chosen) > 1:\n",
      "    if len(chosen) > 2:\n",
      "two of --thresholds, --threshold, --top-k, --mass accepted together",
      CLI_OPTIONS),
    M("cli-batch-size-unchecked", CLI,
      "for option in (\"batch_size\", \"top_k\", \"max_count\"):",
      "for option in (\"top_k\", \"max_count\"):",
      "--batch-size 0 not refused up front",
      CLI_OPTIONS),
    M("cli-ignore-label-zero", CLI,
      "if given(\"ignore_label\") and args.ignore_label in (0, 1):",
      "if given(\"ignore_label\") and args.ignore_label == 1:",
      "--ignore-label 0 accepted, leaving out every negative label",
      CLI_OPTIONS),
    M("cli-threshold-below-zero", CLI,
      "if loaded.probabilities and not 0 <= value <= 1:",
      "if loaded.probabilities and value > 1:",
      "a negative threshold on probabilities accepted (only the upper end checked)",
      CLI_OPTIONS),
    M("cli-target-precision-needed", CLI,
      "        if not given(\"target_precision\"):\n"
      "            raise UsageError(\"--method precision needs --target-precision P (0 < P <= 1)\")\n",
      "",
      "--method precision without --target-precision not caught by the tool's own check",
      "tests/test_cli_tool.py::test_bad_input_is_one_line_and_status_2"),
    M("cli-outputs-over-inputs", CLI,
      "    files.refuse_overwriting_inputs(outputs, inputs)\n",
      "",
      "an output path that is one of the inputs is not refused",
      CLI_OUTPUTS),
    M("cli-softmax-twice", TOOL_NET,
      "if args.activation in (\"sigmoid\", \"softmax\"):",
      "if args.activation == \"sigmoid\":",
      "--activation softmax on a blob a Softmax layer made squashes it twice",
      CLI_SQUASHING),
    M("cli-batch-outputs-aliased", TOOL_NET,
      "outputs.append(net.blobs[loaded.output].data.astype(np.float64))",
      "outputs.append(net.blobs[loaded.output].data)",
      "each batch's scores kept as a view of the blob, which the next forward overwrites",
      CLI_TOOL),
    M("cli-last-batch-not-reshaped", TOOL_NET,
      "if blob.data.shape[0] != len(batch):",
      "if blob.data.shape[0] < len(batch):",
      "the input blob only grows: a smaller last batch does not fit",
      CLI_TOOL),
    M("cli-non-finite-inputs-pass", TOOL_DATA,
      "        if not finite.all():\n",
      "        if False:\n",
      "NaN or infinity in the inputs fed to the net unchecked: the net's scores are NaN for those samples",
      "tests/test_cli_mistakes.py::test_bad_data_is_one_line"),
    M("cli-mass-sum-one-sided", CLI,
      "off = np.flatnonzero(np.abs(sums - 1) > MASS_SUM_TOLERANCE)",
      "off = np.flatnonzero(sums - 1 > MASS_SUM_TOLERANCE)",
      "--mass accepts scores that sum to less than 1",
      EDGE),
]


def apply(mutant, text):
    """``text`` (the file's contents) with the mutant's ``old`` replaced by its ``new``."""
    return text.replace(mutant.old, mutant.new, 1)


def problems(root, mutants=None):
    """What keeps the list (or the given ``mutants`` of it) from applying to the checkout at
    ``root``: a list of one-line messages, each starting with the mutant's name."""
    root = Path(root)
    found = []
    names = [m.name for m in MUTANTS]
    for name in sorted({n for n in names if names.count(n) > 1}):
        found.append(f"{name}: the name is used {names.count(name)} times")
    for m in MUTANTS if mutants is None else mutants:
        path = root / m.file
        if not path.is_file():
            found.append(f"{m.name}: {m.file} does not exist")
            continue
        text = path.read_text()
        count = text.count(m.old)
        if count != 1:
            found.append(f"{m.name}: its old text occurs {count} times in {m.file} (it must occur once): "
                         f"{m.old.strip().splitlines()[0][:80]!r}")
        elif m.file.endswith(".py"):
            try:  # a mutant that does not compile is caught by any import: it would test nothing
                compile(apply(m, text), m.file, "exec")
            except SyntaxError as error:
                found.append(f"{m.name}: the mutated {m.file} does not compile ({error.msg}, line {error.lineno})")
        if m.old == m.new:
            found.append(f"{m.name}: old and new are the same text")
        if not m.bug or "\n" in m.bug:
            found.append(f"{m.name}: the bug needs a one-line description")
        if not m.tests:
            found.append(f"{m.name}: no test files listed")
        for test in m.tests:
            file, _, function = test.partition("::")
            if not (root / file).is_file():
                found.append(f"{m.name}: test file {file} does not exist")
            elif function and f"def {function}(" not in (root / file).read_text():
                found.append(f"{m.name}: {file} has no test {function}")
    return found

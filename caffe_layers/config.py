"""The validated, immutable options of every layer, read from ``param_str``: one class per layer.

A loss config subclasses ``LossConfig`` (the options every loss shares) and adds its own
fields and their checks in ``parse``; ``from_param_str`` reads the text, rejects unknown and
duplicate keys, and calls ``parse``. ``kernel_options()`` is what the layer passes to its NumPy
loss function as keyword arguments.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from . import params
from .decoding import ACTIVATIONS

# The largest focusing exponent accepted: gamma times a float32 value must stay finite, and
# beyond a few dozen (1 - p)^gamma is 0 for every element that is not misclassified anyway.
MAX_GAMMA = 1000.0
# The largest class weight accepted: a weighted loss of float32 scores must stay finite.
MAX_CLASS_WEIGHT = 1e6


@dataclass(frozen=True)
class LossConfig:
    """The options every loss takes. Subclasses add fields (all with defaults) and extend ``parse``.

    ``NORMALIZATIONS``: the accepted ``normalization`` values; ``ALIASES``: other spellings of
    keys (``{"focusing_parameter": "gamma"}``); ``EXTRA_KEYS``: keys that are not fields but that
    ``parse`` reads into one, in another form (``{"class_balances": "class_weights"}``): giving
    both is an error. ``spellings`` records, per option, the key the user wrote, so that a later
    error names it.
    """
    class_weights: Optional[Tuple[float, ...]] = None
    normalization: str = "batch_size"
    ignore_label: Optional[int] = None
    check_finite: bool = True
    spellings: Tuple[Tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    NORMALIZATIONS = ("batch_size", "full", "valid", "none")
    ALIASES = {}
    EXTRA_KEYS = {}
    # options of the layer, not of the NumPy loss function
    LAYER_ONLY = ("normalization", "check_finite", "spellings")

    @classmethod
    def keys(cls):
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "spellings") + tuple(cls.EXTRA_KEYS)

    @classmethod
    def from_param_str(cls, param_str, layer=None):
        layer = layer or cls.LAYER
        raw, written = params.parse_param_str(layer, param_str, allowed=cls.keys(), aliases=cls.ALIASES,
                                              spellings=True)
        for extra, option in cls.EXTRA_KEYS.items():
            if extra in raw and option in raw:
                raise ValueError(f"{layer}: {option!r} and its alias {extra!r} are both given; give one")
            if extra in raw:
                written[option] = extra
        options = cls.parse(layer, raw)
        return cls(**options, spellings=tuple(sorted(written.items())))

    @classmethod
    def parse(cls, layer, raw):
        """Check the shared keys of ``raw`` (canonical keys -> values); return the constructor's options."""
        config = {}
        if raw.get("class_weights") is not None:
            config["class_weights"] = params.number_list(layer, "class_weights", raw["class_weights"], low=0.0)
            params.at_most(layer, "class_weights", config["class_weights"], MAX_CLASS_WEIGHT)
        if "normalization" in raw:
            config["normalization"] = params.choice(layer, "normalization", raw["normalization"],
                                                    cls.NORMALIZATIONS)
        if "ignore_label" in raw:
            config["ignore_label"] = params.optional_integer(layer, "ignore_label", raw["ignore_label"])
        if "check_finite" in raw:
            config["check_finite"] = params.boolean(layer, "check_finite", raw["check_finite"])
        return config

    def written(self, key):
        """The key as the user wrote it (an alias, or the key itself)."""
        return dict(self.spellings).get(key, key)

    def kernel_options(self):
        """The options of the NumPy loss function, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.LAYER_ONLY}


@dataclass(frozen=True)
class _SigmoidConfig(LossConfig):
    """Options of the element-wise sigmoid losses: targets in [0, 1], so no ignore_label 0 or 1."""
    NORMALIZATIONS = LossConfig.NORMALIZATIONS + ("positives",)

    @classmethod
    def parse(cls, layer, raw):
        config = super().parse(layer, raw)
        if config.get("ignore_label") in (0, 1):
            raise ValueError(f"{layer}: 'ignore_label' {config['ignore_label']} is a target value (targets are "
                             f"in [0, 1]): it would ignore every {'negative' if config['ignore_label'] == 0 else 'positive'}; "
                             f"use a value outside [0, 1] such as -1")
        return config


def _gamma(layer, key, value):
    gamma = params.number(layer, key, value, low=0.0)
    params.at_most(layer, key, gamma, MAX_GAMMA)
    return gamma


@dataclass(frozen=True)
class FocalConfig(_SigmoidConfig):
    gamma: float = 2.0
    alpha: Union[None, float, Tuple[float, ...]] = None

    LAYER = "SigmoidFocalLoss"
    ALIASES = {"focusing_parameter": "gamma"}
    EXTRA_KEYS = {"class_balances": "class_weights"}

    @classmethod
    def parse(cls, layer, raw):
        config = super().parse(layer, raw)
        if "gamma" in raw:
            config["gamma"] = _gamma(layer, "gamma", raw["gamma"])
        alpha = raw.get("alpha")
        if alpha is not None:
            config["alpha"] = (params.number(layer, "alpha", alpha, 0.0, 1.0) if params.is_number(alpha)
                               else params.number_list(layer, "alpha", alpha, 0.0, 1.0))
        if raw.get("class_balances") is not None:
            config["class_weights"] = params.class_balances(layer, raw["class_balances"])
            params.at_most(layer, "class_balances", config["class_weights"], MAX_CLASS_WEIGHT)
        return config


@dataclass(frozen=True)
class AsymmetricConfig(_SigmoidConfig):
    gamma_pos: float = 0.0
    gamma_neg: float = 4.0
    clip: float = 0.05
    detach_focal_weight: bool = False

    LAYER = "AsymmetricLoss"

    @classmethod
    def parse(cls, layer, raw):
        config = super().parse(layer, raw)
        for key in ("gamma_pos", "gamma_neg"):
            if key in raw:
                config[key] = _gamma(layer, key, raw[key])
        if "clip" in raw:
            config["clip"] = params.number(layer, "clip", raw["clip"], 0.0, 1.0, high_open=True)
        if "detach_focal_weight" in raw:
            config["detach_focal_weight"] = params.boolean(layer, "detach_focal_weight", raw["detach_focal_weight"])
        return config


@dataclass(frozen=True)
class SoftmaxConfig(LossConfig):
    axis: int = 1
    target_normalization: str = "count"
    label_smoothing: float = 0.0
    loss: str = "cross_entropy"

    LAYER = "MultiLabelSoftmaxLoss"

    @classmethod
    def parse(cls, layer, raw):
        config = super().parse(layer, raw)
        if "axis" in raw:
            axis = params.optional_integer(layer, "axis", raw["axis"])
            if axis is None:
                raise ValueError(f"{layer}: 'axis' must be an integer (got None)")
            config["axis"] = axis
        if "target_normalization" in raw:
            config["target_normalization"] = params.choice(
                layer, "target_normalization", raw["target_normalization"], ("count", "sum", "none"))
        if "label_smoothing" in raw:
            config["label_smoothing"] = params.number(layer, "label_smoothing", raw["label_smoothing"],
                                                      0.0, 1.0, high_open=True)
        if "loss" in raw:
            config["loss"] = params.choice(layer, "loss", raw["loss"], ("cross_entropy", "kl"))
        return config


METRICS = ("mAP", "micro_f1", "macro_f1", "precision@k", "recall@k")


@dataclass(frozen=True)
class MetricsConfig:
    """Options of ``MultiLabelMetrics`` (not a loss: none of the shared loss options)."""
    activation: str = "sigmoid"
    metrics: Tuple[str, ...] = ("mAP",)
    threshold: Union[float, str] = 0.5    # one number, or the path of a thresholds JSON file
    k: int = 1
    ignore_label: Optional[int] = None

    LAYER = "MultiLabelMetrics"

    @classmethod
    def from_param_str(cls, param_str, layer=None):
        layer = layer or cls.LAYER
        raw = params.parse_param_str(layer, param_str,
                                     allowed=("activation", "metrics", "threshold", "k", "ignore_label"))
        config = {}
        if "activation" in raw:
            config["activation"] = params.choice(layer, "activation", raw["activation"], ACTIVATIONS)
        if "metrics" in raw:
            chosen = raw["metrics"]
            if (not isinstance(chosen, list) or not chosen
                    or not all(isinstance(name, str) and name in METRICS for name in chosen)):
                raise ValueError(f"{layer}: 'metrics' must be a non-empty list chosen from "
                                 f"{', '.join(map(repr, METRICS))} (got {chosen!r})")
            config["metrics"] = tuple(chosen)
        if "threshold" in raw:
            value = raw["threshold"]
            config["threshold"] = value if isinstance(value, str) else params.number(layer, "threshold", value)
        if "k" in raw:
            k = params.optional_integer(layer, "k", raw["k"])
            if k is None or k < 1:
                raise ValueError(f"{layer}: 'k' must be an integer >= 1 (got {raw['k']!r})")
            config["k"] = k
        if "ignore_label" in raw:
            config["ignore_label"] = params.optional_integer(layer, "ignore_label", raw["ignore_label"])
        return cls(**config)

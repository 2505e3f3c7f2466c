"""The validated, immutable options of each loss layer, read from ``param_str``."""
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from . import params

SHARED_NORMALIZATIONS = ("batch_size", "full", "valid", "none")


def _shared_options(layer, raw, normalizations):
    """The keys both losses take: class_weights, normalization, ignore_label, check_finite."""
    config = {}
    if raw.get("class_weights") is not None:
        config["class_weights"] = params.number_list(layer, "class_weights", raw["class_weights"], low=0.0)
    if "normalization" in raw:
        config["normalization"] = params.choice(layer, "normalization", raw["normalization"], normalizations)
    if "ignore_label" in raw:
        config["ignore_label"] = params.optional_integer(layer, "ignore_label", raw["ignore_label"])
    if "check_finite" in raw:
        config["check_finite"] = params.boolean(layer, "check_finite", raw["check_finite"])
    return config


@dataclass(frozen=True)
class FocalConfig:
    gamma: float = 2.0
    alpha: Union[None, float, Tuple[float, ...]] = None
    class_weights: Optional[Tuple[float, ...]] = None
    normalization: str = "batch_size"
    ignore_label: Optional[int] = None
    check_finite: bool = True

    @classmethod
    def from_param_str(cls, param_str, layer="SigmoidFocalLoss"):
        raw = params.parse_param_str(
            layer, param_str,
            allowed=("gamma", "alpha", "class_weights", "class_balances", "normalization",
                     "ignore_label", "check_finite"),
            aliases={"focusing_parameter": "gamma"})
        if "class_weights" in raw and "class_balances" in raw:
            raise ValueError(f"{layer}: 'class_weights' and its alias 'class_balances' are both given; give one")
        config = {}
        if "gamma" in raw:
            config["gamma"] = params.number(layer, "gamma", raw["gamma"], low=0.0)
        alpha = raw.get("alpha")
        if alpha is not None:
            config["alpha"] = (params.number(layer, "alpha", alpha, 0.0, 1.0) if params.is_number(alpha)
                               else params.number_list(layer, "alpha", alpha, 0.0, 1.0))
        if raw.get("class_balances") is not None:
            config["class_weights"] = params.class_balances(layer, raw["class_balances"])
        config.update(_shared_options(layer, raw, SHARED_NORMALIZATIONS + ("positives",)))
        return cls(**config)


@dataclass(frozen=True)
class SoftmaxConfig:
    axis: int = 1
    target_normalization: str = "count"
    label_smoothing: float = 0.0
    loss: str = "cross_entropy"
    class_weights: Optional[Tuple[float, ...]] = None
    normalization: str = "batch_size"
    ignore_label: Optional[int] = None
    check_finite: bool = True

    @classmethod
    def from_param_str(cls, param_str, layer="MultiLabelSoftmaxLoss"):
        raw = params.parse_param_str(
            layer, param_str,
            allowed=("axis", "target_normalization", "label_smoothing", "loss", "class_weights",
                     "normalization", "ignore_label", "check_finite"))
        config = {}
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
        config.update(_shared_options(layer, raw, SHARED_NORMALIZATIONS))
        return cls(**config)

"""The one list of the package's Caffe layers. ``caffe_layers`` (the names prototxt loads),
``caffe_layers.netspec`` (its helpers and comments) and the docs' layer tables read it."""
from collections import namedtuple

from .config import AsymmetricConfig, FocalConfig, MetricsConfig, SoftmaxConfig

LayerInfo = namedtuple("LayerInfo", "name module config netspec_helper is_loss summary")
LayerInfo.__doc__ = """name: the ``python_param { layer: ... }`` name; module: where its class lives;
config: its options class (``from_param_str``); netspec_helper: the name of its helper in
``caffe_layers.netspec``; is_loss: its first top is a loss (needs ``loss_weight``); summary: one line."""

LAYERS = {info.name: info for info in (
    LayerInfo("SigmoidFocalLoss", "caffe_layers.layers", FocalConfig, "sigmoid_focal_loss", True,
              "sigmoid focal loss (Lin et al. 2017); gamma 0 is sigmoid cross-entropy"),
    LayerInfo("AsymmetricLoss", "caffe_layers.layers", AsymmetricConfig, "asymmetric_loss", True,
              "asymmetric loss (Ridnik et al. 2021): separate focusing for positives and negatives, "
              "a probability margin for negatives"),
    LayerInfo("MultiLabelSoftmaxLoss", "caffe_layers.layers", SoftmaxConfig, "multilabel_softmax_loss", True,
              "softmax cross-entropy over multi-hot or real-valued targets (Mahajan et al. 2018)"),
    LayerInfo("MultiLabelMetrics", "caffe_layers.metrics_layer", MetricsConfig, "multilabel_metrics", False,
              "mAP, micro/macro F1, precision@k, recall@k as tops of a TEST net"),
)}

LOSS_LAYERS = tuple(name for name, info in LAYERS.items() if info.is_loss)

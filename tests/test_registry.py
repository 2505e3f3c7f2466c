"""The registry of layers is the one list: every registered layer loads from prototxt, has its
NetSpec helper (losses), its reference section, a README entry, a prototxt snippet and (losses)
a benchmark case. A layer missing from any of these fails here, naming the place."""
import sys

import pytest

import caffe_layers
from caffe_layers.registry import LAYERS, LOSS_LAYERS

from conftest import ROOT

caffe = pytest.importorskip("caffe")
from caffe_layers import layers, netspec  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_losses  # noqa: E402

SNIPPETS = "\n".join(path.read_text() for path in (ROOT / "prototxt" / "snippets").glob("*.prototxt"))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_registered_layer_is_everywhere_a_user_looks(name):
    info = LAYERS[name]
    cls = getattr(caffe_layers, name)
    assert cls.NAME == name and cls.__module__ == info.module
    assert f'layer: "{name}"' in SNIPPETS, f"prototxt/snippets/ has no {name} layer (examples/make_nets.py writes them)"
    assert f"## {name}" in (ROOT / "docs" / "layers.md").read_text(), f"docs/layers.md has no section for {name}"
    assert f"`{name}`" in (ROOT / "README.md").read_text(), f"README.md does not list {name}"
    if info.is_loss:
        assert cls.CONFIG is info.config and issubclass(cls, layers.LossLayer)
        assert callable(getattr(netspec, info.netspec_helper)), f"caffe_layers.netspec has no {info.netspec_helper}"
        benched = {layer for _, layer, *_ in bench_losses.LAYERS}
        assert name in benched, f"make bench (benchmarks/bench_losses.py LAYERS) does not time {name}"


def test_exactly_the_registered_losses_are_loss_layers():
    defined = {cls.NAME for cls in vars(layers).values()
               if isinstance(cls, type) and issubclass(cls, layers.LossLayer) and cls.NAME}
    assert defined == set(LOSS_LAYERS)


def test_to_prototxt_comments_the_loss_weight_of_every_registered_loss():
    for name in LOSS_LAYERS:
        n = caffe.NetSpec()
        n.score, n.label = caffe.layers.Input(shape=[dict(dim=[2, 3]), dict(dim=[2, 3])], ntop=2)
        n.loss = getattr(netspec, LAYERS[name].netspec_helper)(n.score, n.label)
        text = netspec.to_prototxt(n)
        assert f"  {netspec.LOSS_WEIGHT_COMMENT}\n  loss_weight: 1\n" in text, name

"""Bundled example data: multi-label "digit canvases" made from scikit-learn's handwritten digits.

Each sample is a ``canvas x canvas`` grey image holding 1 to 4 distinct digits (the 8x8 images
of ``sklearn.datasets.load_digits``, 1797 of them, shipped with scikit-learn: nothing is
downloaded) at random, non-overlapping places; its labels are the digits present, multi-hot
over 10 classes. Some digits are rare: ``rare_digits`` are drawn ``rare_factor`` times less
often than the others, so a loss that handles imbalance has work to do.

The 1797 source images are split per digit 60/20/20 into train/val/test pools first, so the
test canvases are made of handwriting the net never saw. Everything follows one seed.

Files, as Caffe's ``HDF5Data`` layer reads them (``source`` is a list file of ``.h5`` paths)::

    OUT/train.h5, val.h5, test.h5   data  float32 (N, 1, canvas, canvas) in [0, 1]
                                    label float32 (N, 10) multi-hot
    OUT/train.txt, val.txt, test.txt  the absolute path of the matching .h5, one line

Command line, from the repository root: ``.venv/bin/python examples/digits_data.py --out runs/digits``
(``--help`` for sizes). ``examples/demo.py`` and ``examples/train_cli.sh`` call it; the nets of
prototxt/ read its files from ``runs/digits/``.
"""
import argparse
import os
import sys
from dataclasses import dataclass
from typing import Tuple

import numpy as np

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # caffe_layers of this checkout
from caffe_layers.files import atomic_output, write_text  # noqa: E402

NUM_CLASSES = 10
DIGIT = 8          # load_digits images are 8x8, values 0..16
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DigitsSpec:
    canvas: int = 32
    min_digits: int = 1
    max_digits: int = 4
    rare_digits: Tuple[int, ...] = (7, 8, 9)
    rare_factor: float = 10.0
    seed: int = 0

    def __post_init__(self):
        if self.canvas < DIGIT:
            raise ValueError(f"canvas must be >= {DIGIT} (got {self.canvas})")
        if not 1 <= self.min_digits <= self.max_digits <= NUM_CLASSES:
            raise ValueError(f"need 1 <= min_digits <= max_digits <= {NUM_CLASSES} "
                             f"(got {self.min_digits}, {self.max_digits})")
        if self.max_digits > (self.canvas // DIGIT) ** 2:
            raise ValueError(f"{self.max_digits} digits do not fit side by side on a "
                             f"{self.canvas}x{self.canvas} canvas")
        if not all(0 <= d < NUM_CLASSES for d in self.rare_digits):
            raise ValueError(f"rare_digits must be digits 0..9 (got {self.rare_digits})")
        if not self.rare_factor >= 1:
            raise ValueError(f"rare_factor must be >= 1 (got {self.rare_factor})")

    def digit_weights(self):
        """Relative probability of drawing each digit, ``(10,)``, summing to 1."""
        weights = np.ones(NUM_CLASSES)
        weights[list(self.rare_digits)] = 1.0 / self.rare_factor
        return weights / weights.sum()


def source_pools(seed):
    """The digits' images split per digit 60/20/20: ``{split: [images of digit d, (n_d, 8, 8)] * 10}``."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)     # 0..16 -> [0, 1]
    rng = np.random.default_rng([seed, 1])
    pools = {split: [] for split in SPLITS}
    for d in range(NUM_CLASSES):
        index = rng.permutation(np.flatnonzero(digits.target == d))
        n_train, n_val = int(0.6 * len(index)), int(0.2 * len(index))
        pools["train"].append(images[index[:n_train]])
        pools["val"].append(images[index[n_train:n_train + n_val]])
        pools["test"].append(images[index[n_train + n_val:]])
    return pools


def _places(rng, count, canvas):
    """``count`` top-left corners of non-overlapping 8x8 boxes on the canvas."""
    corners = []
    while len(corners) < count:
        y, x = rng.integers(0, canvas - DIGIT + 1, size=2)
        if all(abs(y - cy) >= DIGIT or abs(x - cx) >= DIGIT for cy, cx in corners):
            corners.append((int(y), int(x)))
        elif len(corners) and rng.random() < 0.01:  # a crowded start: begin again
            corners = []
    return corners


def make_canvases(n, pool, spec, rng):
    """``n`` samples from one split's pool: ``(data (n, 1, H, W), label (n, 10))``, float32."""
    data = np.zeros((n, 1, spec.canvas, spec.canvas), np.float32)
    label = np.zeros((n, NUM_CLASSES), np.float32)
    weights = spec.digit_weights()
    for i in range(n):
        count = int(rng.integers(spec.min_digits, spec.max_digits + 1))
        chosen = rng.choice(NUM_CLASSES, size=count, replace=False, p=weights)
        for d, (y, x) in zip(chosen, _places(rng, count, spec.canvas)):
            image = pool[d][rng.integers(len(pool[d]))]
            data[i, 0, y:y + DIGIT, x:x + DIGIT] = image
            label[i, d] = 1.0
    return data, label


def make_digits(out_dir, sizes=(6000, 1000, 1000), spec=DigitsSpec()):
    """Write the train/val/test HDF5 files and their list files into ``out_dir``.

    sizes: samples per split (train, val, test). Returns ``{split: path of its list file}``.
    Deterministic: the same ``spec`` (its seed) and sizes give the same arrays.
    """
    import h5py
    os.makedirs(out_dir, exist_ok=True)
    pools = source_pools(spec.seed)
    lists = {}
    for k, (split, n) in enumerate(zip(SPLITS, sizes)):
        rng = np.random.default_rng([spec.seed, 2, k])
        data, label = make_canvases(int(n), pools[split], spec, rng)
        h5_path = os.path.abspath(os.path.join(out_dir, f"{split}.h5"))
        with atomic_output(h5_path) as temporary:          # written whole, then renamed into place
            with h5py.File(temporary, "w") as handle:
                handle.create_dataset("data", data=data)
                handle.create_dataset("label", data=label)
        lists[split] = os.path.join(out_dir, f"{split}.txt")
        write_text(lists[split], h5_path + "\n")
    return lists


def label_counts(h5_path):
    """Positives per class of an HDF5 file's ``label``, ``(10,)`` int."""
    import h5py
    with h5py.File(h5_path, "r") as handle:
        return np.asarray(handle["label"]).sum(axis=0).astype(int)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/digits", help="output folder (default: runs/digits)")
    parser.add_argument("--sizes", type=int, nargs=3, default=(6000, 1000, 1000), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--canvas", type=int, default=DigitsSpec.canvas)
    parser.add_argument("--seed", type=int, default=DigitsSpec.seed)
    args = parser.parse_args(argv)
    lists = make_digits(args.out, args.sizes, DigitsSpec(canvas=args.canvas, seed=args.seed))
    for split, path in lists.items():
        counts = label_counts(os.path.join(args.out, f"{split}.h5"))
        print(f"{split}: {path}; positives per digit {counts.tolist()}")


if __name__ == "__main__":
    main()

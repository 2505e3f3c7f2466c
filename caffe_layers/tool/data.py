"""A data set of the ``caffe-layers`` command: inputs and multi-hot labels from an HDF5 or .npz file."""
import os

import numpy as np

from .. import class_weights as cw
from . import UsageError, import_tool


def existing(path, what):
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative paths are read from {os.getcwd()!r})"
        kind = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise UsageError(f"{what} {path!r} {kind}{where}")
    return path


class Dataset:
    """Inputs (read lazily for HDF5) and labels (read whole) of an HDF5 or .npz file."""

    def __init__(self, path, data_key, label_key, need_data=True, need_labels=True):
        existing(path, "data file")
        self.path, self.data_key, self.label_key = path, data_key, label_key
        if path.endswith(".npz"):
            try:
                self._file = np.load(path, allow_pickle=False)
                self._keys = list(self._file.files)
            except (OSError, ValueError, EOFError) as error:
                raise UsageError(f"data file {path!r} is not a readable .npz file: {error}") from None
        elif path.endswith((".h5", ".hdf5")):
            h5py = import_tool("h5py")
            try:
                self._file = h5py.File(path, "r")
            except OSError as error:
                raise UsageError(f"data file {path!r} is not a readable HDF5 file: {error}") from None
            self._keys = list(self._file)
        else:
            raise UsageError(f"data file {path!r} must be HDF5 (.h5, .hdf5) or NumPy .npz")
        self.data = self._get(data_key, "--data-key", "(N, ...) inputs") if need_data else None
        self.labels = None
        if need_labels:
            labels = self._get(label_key, "--label-key", "(N, C) multi-hot labels")
            if labels.ndim != 2:
                raise UsageError(f"data file {path!r}: {label_key!r} must be (N, C) multi-hot labels, "
                                 f"got shape {tuple(labels.shape)}")
            self.labels = np.asarray(labels)
        size = len(self.data) if need_data else len(self.labels)
        if size == 0:
            raise UsageError(f"data file {path!r} is empty: "
                             f"{data_key if need_data else label_key!r} has 0 samples")
        if need_data and need_labels and len(self.labels) != len(self.data):
            raise UsageError(f"data file {path!r}: {label_key!r} has {len(self.labels)} rows but "
                             f"{data_key!r} has {len(self.data)}")

    def _get(self, key, option, what):
        if key not in self._keys:
            raise UsageError(f"data file {self.path!r} has no {key!r} (it has: {', '.join(sorted(self._keys))}); "
                             f"set {option}")
        try:
            array = self._file[key]
        except ValueError as error:           # an object array in an .npz (pickles are not loaded)
            raise UsageError(f"data file {self.path!r}: {key!r} cannot be read as numbers: {error}") from None
        if not hasattr(array, "shape") or not hasattr(array, "dtype"):
            raise UsageError(f"data file {self.path!r}: {key!r} is a group, not a data set of {what}")
        if len(array.shape) == 0:
            raise UsageError(f"data file {self.path!r}: {key!r} is a scalar (shape ()), expected {what}; "
                             f"store one row per sample")
        if array.dtype.kind not in "biuf":
            raise UsageError(f"data file {self.path!r}: {key!r} holds {array.dtype} values, expected numbers "
                             f"({what})")
        return array

    def __len__(self):
        return len(self.data) if self.data is not None else len(self.labels)

    def valid_positive(self, ignore_label):
        """Check the labels (0, 1 or ignore_label); return (valid or None, positive) masks."""
        try:
            cw.label_counts(self.labels, ignore_label)
        except ValueError as error:
            raise UsageError(f"data file {self.path!r}: {self.label_key!r}: {error}") from None
        valid = None if ignore_label is None else self.labels != ignore_label
        return valid, self.labels == 1

    def batch(self, start, stop):
        """Inputs ``[start, stop)`` as float32; refuses non-finite values, naming the sample."""
        batch = np.asarray(self.data[start:stop], dtype=np.float32)
        finite = np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            value = batch[i][~np.isfinite(batch[i])].flat[0]
            raise UsageError(f"data file {self.path!r}: {self.data_key!r} holds a non-finite value ({value}) in "
                             f"sample {start + i}; clean or drop that sample")
        return batch

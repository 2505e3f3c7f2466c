"""Walking a big blob in cache-sized blocks, with scratch arrays reused from block to block.

A loss over a ``(N, C, S)`` view is computed block by block so that the temporaries of the
math stay in the CPU cache instead of streaming the whole blob through memory once per
operation, and every operation writes into a scratch array allocated once per call
(``Scratch``) instead of a fresh temporary.

Two ways to cut a blob:

- ``block_slices``: blocks ``(n, C, s)`` that never split axis 1 (classes), for losses that
  reduce over classes (softmax). Along ``S`` a block keeps at least ``MIN_RUN`` contiguous
  elements, so that an ``(N, C, S)`` blob with many classes is not read in short strided runs.
- ``flat_blocks``: contiguous runs of the flattened blob, cut at sample and class boundaries so
  that each block is an ``(n, c, s)`` box: for element-wise losses (the sigmoid focal loss),
  with per-class vectors sliced along with the block.
"""
import numpy as np

# Sizes measured with benchmarks/bench_losses.py (2 cores, numpy 2.4): a NumPy call costs a few
# microseconds whatever its size, so blocks are as big as the cache allows and bigger still
# where a loss makes many calls per block.
BLOCK_ELEMENTS = 1 << 15  # flat_blocks: 32K elements, a dozen float32 scratch arrays of 128 KiB
CLASS_BLOCK_ELEMENTS = 1 << 18  # block_slices: 256K elements (1 MiB of float32) per block
MIN_RUN = 256  # the shortest run along S that block_slices reads per class (1 KiB of float32)
SAMPLE_ELEMENTS = 1 << 22  # block_slices reads a sample of up to 4M elements (16 MiB) as one block
# A block is also at most 1/8 (flat_blocks) or 1/2 (block_slices) of the array, so that the
# scratch arrays of a call (up to 12 and 4 blocks' worth) stay within about twice the array,
# but never smaller than this:
MIN_BLOCK_ELEMENTS = 1 << 12


def as_ncs(shape, axis=1):
    """``(d0, .., d_axis, ..)`` -> ``(outer, C, inner)``: the 3-d view the losses work on."""
    outer = 1
    for d in shape[:axis]:
        outer *= d
    inner = 1
    for d in shape[axis + 1:]:
        inner *= d
    return outer, shape[axis], inner


def ncs_views(ncs, *arrays):
    """Each array (None stays None) as its ``(N, C, S)`` view."""
    return tuple(None if array is None else array.reshape(ncs) for array in arrays)


def block_slices(ncs, block_elements=None, min_run=None, sample_elements=None):
    """Yield ``(n_slice, s_slice)`` pairs covering an ``(N, C, S)`` array in blocks of whole
    class vectors (the defaults, None, read this module's constants when called).

    Samples are grouped into blocks ``(n, C, S)`` of at most ``block_elements``, and at most half
    the array (``MIN_BLOCK_ELEMENTS`` at least). A sample bigger than that is one block
    ``(1, C, S)`` of whole contiguous rows when it has at most ``sample_elements`` and is at most
    half the array; otherwise it is cut along S into ``(1, C, s)`` blocks of that size, with
    ``s >= min(S, min_run)``.
    """
    block_elements = CLASS_BLOCK_ELEMENTS if block_elements is None else block_elements
    min_run = MIN_RUN if min_run is None else min_run
    sample_elements = SAMPLE_ELEMENTS if sample_elements is None else sample_elements
    n, c, s = ncs
    per_sample = max(1, c * s)
    half = max(MIN_BLOCK_ELEMENTS, n * per_sample // 2)
    if per_sample <= min(block_elements, half):
        step = max(1, min(block_elements, half) // per_sample)
        for n0 in range(0, n, step):
            yield slice(n0, min(n, n0 + step)), slice(0, s)
        return
    largest = min(sample_elements, half)
    step = s if per_sample <= largest else max(1, min_run, largest // max(1, c))
    for n0 in range(n):
        for s0 in range(0, s, step):
            yield slice(n0, n0 + 1), slice(s0, min(s, s0 + step))


def flat_blocks(ncs, block_elements=None):
    """Yield ``(n_slice, c_slice, s_slice)`` boxes of an ``(N, C, S)`` array, each a contiguous
    run of at most ``block_elements`` elements of the C-ordered array: whole samples, else whole
    ``S`` rows of a sample, else pieces of one row. The default is ``BLOCK_ELEMENTS``, or an
    eighth of the array if that is less (``MIN_BLOCK_ELEMENTS`` at least)."""
    n, c, s = ncs
    if block_elements is None:
        block_elements = min(BLOCK_ELEMENTS, max(MIN_BLOCK_ELEMENTS, n * c * s // 8))
    block_elements = max(1, block_elements)
    if c * s <= block_elements:
        step = block_elements // max(1, c * s)
        for n0 in range(0, n, step):
            yield slice(n0, min(n, n0 + step)), slice(0, c), slice(0, s)
    elif s <= block_elements:
        step = block_elements // s
        for n0 in range(n):
            for c0 in range(0, c, step):
                yield slice(n0, n0 + 1), slice(c0, min(c, c0 + step)), slice(0, s)
    else:
        for n0 in range(n):
            for c0 in range(c):
                for s0 in range(0, s, block_elements):
                    yield slice(n0, n0 + 1), slice(c0, c0 + 1), slice(s0, min(s, s0 + block_elements))


class Scratch:
    """Scratch arrays shared by the blocks of one call, each allocated when first asked for.

    ``scratch.arrays(shape, count)`` returns ``count`` arrays of ``shape``. Array ``i`` is a
    view of the ``i``-th flat buffer, allocated for the first block that uses it (the largest:
    a block after it is never bigger) and reused by the others; views are cached per shape.
    """

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self._flat = []
        self._views = {}

    def arrays(self, shape, count):
        views = self._views.get((shape, count))
        if views is None:
            size = 1
            for d in shape:
                size *= d
            if self._flat and self._flat[0].size < size:  # a bigger block than the first: start over
                self._flat = []
                self._views.clear()
            while len(self._flat) < count:
                self._flat.append(np.empty(max(size, self._flat[0].size if self._flat else 0), dtype=self.dtype))
            views = self._views[(shape, count)] = tuple(flat[:size].reshape(shape) for flat in self._flat[:count])
        return views


class ElementWeights:
    """What multiplies each element's loss and gradient in an element-wise loss, per
    ``flat_blocks`` box: class weights ``(C,)``, weights per sample ``(N,)`` or per element (the
    scores' shape), and the mask of targets that are not ``ignore_label``.

    ``targets(n, c, s, t, out)`` -> ``(t with ignored targets set to 0, the kept mask or None,
    number of kept elements)``; ``scale(n, c, s, kept, out, first=None)`` -> the product of the
    factors (and ``first``, a factor of the caller's), or None when there is none. ``out``: a
    scratch array of the block; ``cleans_targets`` and ``needs_product`` say whether each method
    needs one.
    """

    def __init__(self, ncs, dtype, *, class_weights=None, weights=None, ignore_label=None):
        self.class_weights = (None if class_weights is None
                              else np.asarray(class_weights, dtype=dtype).reshape((1, ncs[1], 1)))
        self.per_sample = False
        self.weights = None
        if weights is not None:
            weights = np.asarray(weights, dtype=dtype)
            # decided by the number of dimensions, never by a dimension's size: (N,) is one weight
            # per sample, (N, 1, 1) here; anything else is one per element, of the scores' shape
            self.per_sample = weights.ndim == 1
            self.weights = weights.reshape((ncs[0], 1, 1) if self.per_sample else ncs)
        self.ignore_label = ignore_label
        self.cleans_targets = ignore_label is not None
        self.needs_product = (class_weights is not None) + (weights is not None) + (ignore_label is not None) > 1

    def targets(self, n, c, s, t, out):
        if self.ignore_label is None:
            return t, None, t.size
        kept = t != self.ignore_label
        return np.multiply(t, kept, out=out), kept, int(np.count_nonzero(kept))  # ignored -> 0 (weight 0)

    def scale(self, n, c, s, kept, out, first=None):
        factors = [f for f in (first,
                               None if self.class_weights is None else self.class_weights[:, c],
                               None if self.weights is None else
                               (self.weights[n] if self.per_sample else self.weights[n, c, s]),
                               kept) if f is not None]
        if len(factors) < 2:
            return factors[0] if factors else None
        product = np.multiply(factors[0], factors[1], out=out)
        for factor in factors[2:]:
            np.multiply(product, factor, out=product)
        return product

    def at(self, flat, ncs):
        """The factors' product at C-order flat indices of the ``(N, C, S)`` array (elements that
        are not ignored), or None: for a loss that computes some elements apart."""
        _, num_classes, inner = ncs
        scale = None
        if self.class_weights is not None:
            scale = self.class_weights.reshape(-1)[flat // inner % num_classes]
        if self.weights is not None:
            if self.per_sample:
                w = self.weights.reshape(-1)[flat // (num_classes * inner)]
            else:
                w = take_flat(self.weights, flat)
            scale = w if scale is None else scale * w
        return scale


def take_flat(array, flat):
    """``array``'s elements at C-order flat indices: through a flat view when it is contiguous
    (a sixth of the time of indexing with three index arrays), else by their indices."""
    if array.flags.c_contiguous:
        return array.reshape(-1)[flat]
    return array[np.unravel_index(flat, array.shape)]

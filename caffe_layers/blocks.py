"""Walking a big blob in cache-sized blocks.

A loss over a ``(N, C, S)`` view is computed block by block so that the dozen temporaries of
the math stay in the CPU cache instead of streaming the whole blob through memory a dozen
times. Blocks never split axis 1 (classes), so per-class vectors and reductions over classes
work on every block unchanged.
"""

BLOCK_ELEMENTS = 1 << 14  # 16K elements: a block's temporaries (~64 KiB each in float32) fit in L2


def as_ncs(shape, axis=1):
    """``(d0, .., d_axis, ..)`` -> ``(outer, C, inner)``: the 3-d view the losses work on."""
    outer = 1
    for d in shape[:axis]:
        outer *= d
    inner = 1
    for d in shape[axis + 1:]:
        inner *= d
    return outer, shape[axis], inner


def block_slices(ncs, block_elements=BLOCK_ELEMENTS):
    """Yield ``(n_slice, s_slice)`` pairs covering an ``(N, C, S)`` array in blocks."""
    n, c, s = ncs
    per_sample = max(1, c * s)
    if per_sample <= block_elements:
        step = max(1, block_elements // per_sample)
        for n0 in range(0, n, step):
            yield slice(n0, min(n, n0 + step)), slice(0, s)
    else:
        step = max(1, block_elements // max(1, c))
        for n0 in range(n):
            for s0 in range(0, s, step):
                yield slice(n0, n0 + 1), slice(s0, min(s, s0 + step))

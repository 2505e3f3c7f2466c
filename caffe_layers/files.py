"""Writing output files safely: never over an input, never half-written.

``atomic_output(path)`` yields a temporary name in the same folder; the caller writes it, and on
success it is renamed over ``path`` in one step (``os.replace``), so a reader, a crash or Ctrl-C
sees the old file or the new one, never a partial one, and a failed write leaves no stray file.

``refuse_overwriting_inputs(outputs, inputs)`` rejects an output that is one of the inputs (or
another output), by file identity (``os.path.samefile``: hard links and symbolic links too) or,
for a file not written yet, by resolved path.

``check_output(option, path)`` rejects, before any work is done, an output path that cannot be
written: a folder, or a file in a folder that does not exist.
"""
import contextlib
import os
import tempfile


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else remove it.

    The temporary name keeps ``path``'s extension (matplotlib picks the format from it) and
    starts with a dot. The file gets the permissions a plain ``open(path, "w")`` would give.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    handle, temp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(handle)
    try:
        yield temp
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as temp:
        with open(temp, "w", newline="") as handle:
            handle.write(text)


def save_figure(figure, path, **options):
    """Save a matplotlib ``figure`` to ``path`` through ``atomic_output`` (``dpi=100`` unless given;
    ``options`` go to ``savefig``), then close it, whether or not the save worked."""
    import matplotlib.pyplot as plt
    options.setdefault("dpi", 100)
    try:
        with atomic_output(path) as temp:
            figure.savefig(temp, **options)
    finally:
        plt.close(figure)


def _same(a, b):
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def refuse_overwriting_inputs(outputs, inputs):
    """Raise ``ValueError`` if an output path is an input or another output.

    ``outputs``, ``inputs``: ``{option: path}``; a path of None or "" is skipped.
    """
    outputs = [(o, os.fspath(p)) for o, p in outputs.items() if p]
    inputs = [(o, os.fspath(p)) for o, p in inputs.items() if p]
    for i, (out_option, out_path) in enumerate(outputs):
        for in_option, in_path in inputs:
            if _same(out_path, in_path):
                raise ValueError(f"{out_option} {out_path!r} is the same file as {in_option} {in_path!r}: writing "
                                 f"it would destroy that input; choose another {out_option} path")
        for other_option, other_path in outputs[:i]:
            if _same(out_path, other_path):
                raise ValueError(f"{out_option} {out_path!r} is the same file as {other_option} {other_path!r}: "
                                 f"one would overwrite the other; choose two different paths")


def check_output(option, path):
    """Raise ``ValueError`` if ``path`` cannot be written as a file (a folder; no such folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path!r}: the folder {folder!r} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path!r}: the folder {folder!r} is not writable")

"""The parts of the ``caffe-layers`` command (``caffe_layers.cli``, which parses the command line):
``tool.data`` reads a data set, ``tool.net`` checks, builds and runs the deploy net. A user's
mistake anywhere is a ``UsageError``: one line on stderr, exit status 2.
"""
PYCAFFE_FIX = ("run `make setup` in the caffe-layers checkout (it builds Caffe into .venv), or put an "
               "existing build's python folder on the path: PYTHONPATH=/path/to/caffe/python")
TOOLS_FIX = "pip install scikit-learn matplotlib tqdm h5py (the package's 'tools' extra; from a clone: pip install '.[tools]')"
TOOLS_MODULES = {"h5py": "h5py", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm",
                 "scipy": "scipy"}


class UsageError(ValueError):
    """Bad input: reported as one line, exit status 2."""


def missing_module_message(error):
    """One line for a missing dependency, or None if ``error`` is about another module."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    if name == "caffe":
        return f"pycaffe is not importable ({error}); {PYCAFFE_FIX}"
    if name in TOOLS_MODULES:
        return (f"this command needs the tools extra, and {TOOLS_MODULES[name]} is not installed ({error}); "
                f"{TOOLS_FIX}")
    return None


def import_tool(name):
    try:
        return __import__(name)
    except ImportError as error:
        raise UsageError(missing_module_message(error) or f"cannot import {name}: {error}") from None

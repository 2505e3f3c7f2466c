"""Parsing and validating a Python layer's ``param_str``.

``param_str`` is data, never code: a JSON object, or a Python-literal dict (so prototxt
written for the seed post's layers keeps working), read with ``json.loads`` or
``ast.literal_eval``. Every value is checked here and every error names the layer, the key,
what is allowed and what came.
"""
import ast
import json
import math
import os

import numpy as np


def parse_param_str(layer, param_str, allowed, aliases=None, spellings=False):
    """Return the ``param_str`` dict with aliases renamed to their canonical keys.

    layer: the layer's name, for messages. allowed: the canonical keys. aliases: maps an
    alias to its canonical key (``{"focusing_parameter": "gamma"}``). Empty means ``{}``.
    A key given twice (``{"gamma": 2, "gamma": 3}``) is an error, as is a key given under two
    spellings. spellings: also return ``{canonical key: the key as written}``.
    """
    aliases = aliases or {}
    text = (param_str or "").strip()
    canonical = {}
    written = {}
    for key, value in (_read_object(layer, text) if text else {}).items():
        name = aliases.get(key, key)
        if name not in allowed:
            known = sorted(set(allowed) | set(aliases))
            raise ValueError(f"{layer}: unknown key {key!r} in param_str; allowed keys: {', '.join(known)}")
        if name in canonical:
            raise ValueError(f"{layer}: {key!r} and another spelling of {name!r} are both given; give one")
        canonical[name] = value
        written[name] = key
    return (canonical, written) if spellings else canonical


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    """A dict from (key, value) pairs; a key given twice is an error, not 'the last one wins'."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _read_object(layer, text):
    """The dict of a JSON object or a Python-literal dict (``ast.literal_eval``: data, never code)."""
    try:
        try:
            value = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKey:
            raise
        except ValueError:
            tree = ast.parse(text, mode="eval").body
            if isinstance(tree, ast.Dict) and None not in tree.keys:
                value = _unique_keys((ast.literal_eval(k), ast.literal_eval(v)) for k, v in zip(tree.keys, tree.values))
            else:
                value = ast.literal_eval(tree)
    except _DuplicateKey as error:
        raise ValueError(f"{layer}: {error.args[0]!r} is given twice in param_str; give it once") from None
    except (ValueError, SyntaxError, TypeError) as error:
        raise ValueError(f"{layer}: param_str must be a JSON object or a Python-literal dict "
                         f"(got {_shorten(text)}: {str(error)[:200]})") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"{layer}: param_str is nested too deeply to read ({len(text)} characters); "
                         f"give a flat JSON object of options") from None
    if not isinstance(value, dict):
        raise ValueError(f"{layer}: param_str must be a JSON object (got {type(value).__name__}: {_shorten(text)})")
    return value


def _shorten(text, limit=120):
    """``repr(text)``, cut to ``limit`` characters (a 100k-character param_str is not echoed whole)."""
    text = repr(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(layer, key, value, low=None, high=None, low_open=False, high_open=False):
    """A finite float within [low, high] (open ends where asked)."""
    try:
        finite = is_number(value) and math.isfinite(value)  # a 400-digit int overflows here
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"{layer}: {key!r} must be a finite number (got {_shorten(value)})")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{layer}: {key!r} must be in {span} (got {value!r})")
    return value


def at_most(layer, key, values, high):
    """Check that a number, or each of a tuple of numbers, is at most ``high``."""
    for i, value in enumerate(values if isinstance(values, tuple) else (values,)):
        if value > high:
            name = f"{key}[{i}]" if isinstance(values, tuple) else key
            raise ValueError(f"{layer}: {name!r} must be at most {high:g} (got {value!r}): larger values "
                             f"overflow float32 in the loss or its gradient")
    return values


def choice(layer, key, value, options):
    if value not in options:
        raise ValueError(f"{layer}: {key!r} must be one of {', '.join(map(repr, options))} (got {value!r})")
    return value


def boolean(layer, key, value):
    if not isinstance(value, bool):
        raise ValueError(f"{layer}: {key!r} must be true or false (got {value!r})")
    return value


def optional_integer(layer, key, value):
    """None, or an integer (an integral float like 255.0 is accepted)."""
    if value is None:
        return None
    try:
        integral = is_number(value) and float(value).is_integer() and abs(value) < 2 ** 63
    except OverflowError:
        integral = False
    if not integral:
        raise ValueError(f"{layer}: {key!r} must be an integer or null (got {_shorten(value)})")
    return int(value)


def number_list(layer, key, value, low=None, high=None):
    """A list of finite numbers in [low, high], or a path to a JSON file holding one.

    A path is read relative to the working directory, so long vectors stay out of prototxt.
    Returns a tuple of floats.
    """
    path = value if isinstance(value, str) else None
    if path is not None:
        value = read_json_file(layer, key, path)
    in_file = "" if path is None else f" in the file {path!r}"
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{layer}: {key!r} must be a non-empty list of numbers or a path to a JSON file "
                         f"holding one (got {_shorten(value)}{in_file})")
    try:
        return tuple(number(layer, f"{key}[{i}]", item, low, high) for i, item in enumerate(value))
    except ValueError as error:
        raise ValueError(f"{error}{in_file}") from None


def read_json_file(layer, key, path):
    if os.path.isdir(path):
        raise ValueError(f"{layer}: {key!r} names {path!r}, which is a directory; give a JSON file "
                         f"holding a list of numbers")
    if not os.path.isfile(path):
        raise ValueError(f"{layer}: {key!r} names the file {path!r}, which does not exist "
                         f"(relative paths are read from {os.getcwd()!r})")
    with open(path) as handle:
        try:
            return json.load(handle)
        except ValueError as error:
            raise ValueError(f"{layer}: {key!r} file {path!r} is not valid JSON: {error}") from None


def first_index(mask):
    """The index tuple of the first True of ``mask``."""
    return tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(mask)[0]), mask.shape))


def describe_bad(values, bad):
    """``"N are not, the first at index (i, j): v"`` for the True entries of ``bad``: the end of a
    message that says what the values must be."""
    index = first_index(bad)
    return f"{int(bad.sum())} are not, the first at index {index}: {float(values[index])!r}"


def per_class(layer, key, values, num_classes):
    """Check that a per-class tuple has one entry per class of the scores."""
    if values is not None and len(values) != num_classes:
        raise ValueError(f"{layer}: {key!r} has {len(values)} entries but the scores have "
                         f"{num_classes} classes")
    return values


def class_balances(layer, mapping):
    """The seed's ``class_balances``: a mapping keyed by 1-based class ids ("1".."C") -> list."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{layer}: 'class_balances' must map class ids \"1\"..\"C\" to weights (got {mapping!r})")
    count = len(mapping)
    expected = {str(i) for i in range(1, count + 1)}
    keys = {str(k) for k in mapping}
    if keys != expected:
        raise ValueError(f"{layer}: 'class_balances' keys must be \"1\"..\"{count}\" "
                         f"(got {sorted(keys, key=lambda k: (len(k), k))})")
    values = [mapping.get(str(i), mapping.get(i)) for i in range(1, count + 1)]
    return number_list(layer, "class_balances", values, low=0.0)

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


def parse_param_str(layer, param_str, allowed, aliases=None):
    """Return the ``param_str`` dict with aliases renamed to their canonical keys.

    layer: the layer's name, for messages. allowed: the canonical keys. aliases: maps an
    alias to its canonical key (``{"focusing_parameter": "gamma"}``). Empty means ``{}``.
    """
    aliases = aliases or {}
    text = (param_str or "").strip()
    if not text:
        return {}
    try:
        params = json.loads(text)
    except ValueError:
        try:
            params = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ValueError(
                f"{layer}: param_str must be a JSON object or a Python-literal dict "
                f"(got {text!r}: {error})") from None
    if not isinstance(params, dict):
        raise ValueError(f"{layer}: param_str must be a JSON object (got {type(params).__name__}: {text!r})")
    canonical = {}
    for key, value in params.items():
        name = aliases.get(key, key)
        if name not in allowed:
            known = sorted(set(allowed) | set(aliases))
            raise ValueError(f"{layer}: unknown key {key!r} in param_str; allowed keys: {', '.join(known)}")
        if name in canonical:
            raise ValueError(f"{layer}: {key!r} and another spelling of {name!r} are both given; give one")
        canonical[name] = value
    return canonical


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(layer, key, value, low=None, high=None, low_open=False, high_open=False):
    """A finite float within [low, high] (open ends where asked)."""
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"{layer}: {key!r} must be a finite number (got {value!r})")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{layer}: {key!r} must be in {span} (got {value!r})")
    return value


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
    if not is_number(value) or not float(value).is_integer():
        raise ValueError(f"{layer}: {key!r} must be an integer or null (got {value!r})")
    return int(value)


def number_list(layer, key, value, low=None, high=None):
    """A list of finite numbers in [low, high], or a path to a JSON file holding one.

    A path is read relative to the working directory, so long vectors stay out of prototxt.
    Returns a tuple of floats.
    """
    if isinstance(value, str):
        value = read_json_file(layer, key, value)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{layer}: {key!r} must be a non-empty list of numbers or a path to a JSON file "
                         f"holding one (got {value!r})")
    return tuple(number(layer, f"{key}[{i}]", item, low, high) for i, item in enumerate(value))


def read_json_file(layer, key, path):
    if not os.path.isfile(path):
        raise ValueError(f"{layer}: {key!r} names the file {path!r}, which does not exist "
                         f"(relative paths are read from {os.getcwd()!r})")
    with open(path) as handle:
        try:
            return json.load(handle)
        except ValueError as error:
            raise ValueError(f"{layer}: {key!r} file {path!r} is not valid JSON: {error}") from None


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

"""Parameters given as text: the one KEY=VALUE parser, and typed coercion by a params dataclass's defaults.

Every place that takes method or synthesis parameters as text (`-p KEY=VALUE` on the command line, the
audit's `-p METHOD:KEY=VALUE`, `Method.make_params`) goes through here, so `stride=8`, `window=16x16`,
`window=0`, lists and booleans mean the same everywhere. Only the standard library and errors.py are
imported: this is a lowest-layer module.
"""
from __future__ import annotations

import dataclasses
import typing
from fractions import Fraction
from typing import Any, Iterable

from .errors import UserError

TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def split_pair(text: str, example: str = "stride=8", error: type[UserError] = UserError) -> tuple[str, str]:
    """(key, value) of one 'KEY=VALUE' string, both stripped; the key is returned as written."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise error(f"Parameter '{text}' is not KEY=VALUE; write e.g. -p {example}.")
    return key.strip(), value.strip()


def parse_pairs(pairs: Iterable[str], example: str = "stride=8",
                error: type[UserError] = UserError) -> dict[str, str]:
    """{key: text} from 'KEY=VALUE' strings; keys spelt with '-' become '_' (blur-sigma = blur_sigma)."""
    parsed = {}
    for pair in pairs:
        key, value = split_pair(pair, example, error)
        parsed[key.replace("-", "_")] = value
    return parsed


def number(text: str | float) -> float:
    """A float from '0.03', '8/255' or '1e-4' (numbers pass through)."""
    if not isinstance(text, str):
        return float(text)
    return float(Fraction(text.strip())) if "/" in text else float(text)


def coerce_fields(cls: type, given: dict[str, Any], owner: str = "",
                  error: type[UserError] = UserError) -> dict[str, Any]:
    """`given` with each value converted to the type of `cls`'s field of that name (unknown keys unchanged).

    `cls` is a params dataclass; `owner` names it in messages (e.g. "method 'occlusion'").
    """
    defaults = _defaults(cls)
    hints = _hints(cls)
    return {key: coerce(key, value, defaults[key], hints.get(key), owner, error) if key in defaults else value
            for key, value in given.items()}


def coerce(key: str, value: Any, default: Any, hint: Any = None, owner: str = "",
           error: type[UserError] = UserError) -> Any:
    """`value` as the type of `default` (or of the annotation `hint` when the default is None).

    Text becomes bool (true/false/yes/no/1/0), int, float (also '8/255'), or a tuple ('16x16', '1,2,3');
    one value for a tuple of n broadcasts to all n ('8' -> (8, 8)). Other values must already have the
    type (an integral float counts as an int); a number or list for a tuple default becomes a tuple the same way.
    """
    kind = _kind(default, hint)
    if kind is None or (kind is str and isinstance(value, str)) or (value is None and default is None):
        return value
    if isinstance(value, str):
        if default is None and value.strip().lower() in ("none", ""):
            return None
        try:
            return _parse(value, kind, default)
        except (ValueError, ZeroDivisionError):
            raise error(_bad_value(key, value, kind, default, owner)) from None
    try:
        return _typed(value, kind, default)
    except (ValueError, TypeError, OverflowError):
        raise error(_bad_value(key, repr(value), kind, default, owner)) from None


def _typed(value: Any, kind: type, default: Any) -> Any:
    """A non-text value checked against `kind` (an integral float counts as an int); ValueError otherwise."""
    number_types = (int, float)
    if kind is str:
        raise ValueError(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(value)
        return value
    if isinstance(value, bool):
        raise ValueError(value)
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise ValueError(value)
        return value
    if kind is float:
        if not isinstance(value, number_types):
            raise ValueError(value)
        return float(value)
    if kind is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, number_types) and not isinstance(v, bool) for v in items):
            raise ValueError(value)
        return _tuple(items, default)
    return value


# ---- text -> typed values ------------------------------------------------------------------------
def _parse(text: str, kind: type, default: Any) -> Any:
    text = text.strip()
    if kind is bool:
        return _bool(text)
    if kind is int:
        return _whole(text)
    if kind is float:
        return number(text)
    parts = [p for p in text.replace("x", ",").replace("X", ",").split(",") if p.strip()]
    if not parts:
        if default == ():
            return ()
        raise ValueError(text)
    element = _element_kind(default)
    return _tuple([element(p.strip()) if element is not float else number(p) for p in parts], default)


def _whole(text: str) -> int:
    """An int from '8' or an integral float text like '1e12' (so a too-large count meets its limit's sentence)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def _bool(text: str) -> bool:
    low = text.lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise ValueError(text)


def _tuple(values: list, default: Any) -> tuple:
    """A tuple for a tuple default: one value broadcasts to the default's length; another length is refused."""
    size = len(default) if isinstance(default, tuple) else 0
    if size and len(values) == 1:
        return tuple(values) * size
    if size and len(values) != size:
        raise ValueError(values)
    return tuple(values)


def _element_kind(default: Any) -> type:
    """int or float for a tuple's elements: the default's first element, int for an empty default."""
    if isinstance(default, tuple) and default:
        return float if isinstance(default[0], float) else int
    return _int_or_float


def _int_or_float(text: str) -> float:
    """An int when the text is one, else a float (for tuples without a default element)."""
    try:
        return int(text)
    except ValueError:
        return number(text)


def _kind(default: Any, hint: Any) -> type | None:
    """bool, int, float, str or tuple: what a value must become (None: leave it as given)."""
    if default is not None:
        for kind in (bool, int, float, str, tuple):
            if isinstance(default, kind):
                return kind
        return None
    if hint is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    origin = typing.get_origin(args[0]) or args[0]
    return origin if origin in (bool, int, float, str, tuple) else None


def _bad_value(key: str, value: str, kind: type, default: Any, owner: str) -> str:
    """One sentence: which parameter, what was given, what it takes."""
    where = f"Parameter '{key}'" + (f" of {owner}" if owner else "")
    if kind is tuple and isinstance(default, tuple) and default:
        size, whole = len(default), _element_kind(default) is int
        one = "one whole number" if whole else "one number"
        like = "x".join(["16" if whole else "0.5"] * size)
        wants = f"{one} (used for all {size}) or {size} like {like}" if size > 2 else \
            f"{one} (used for both) or two like {like}"
    elif kind is tuple:
        wants = "numbers separated by commas like 1,2,3"
    else:
        wants = {bool: "true or false", int: "a whole number like 8", float: "a number like 0.5 or 8/255",
                 str: "a name (text)"}[kind]
    return f"{where} cannot be '{value}'; give {wants}."


def _defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of a dataclass (default factories called)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = None
    return values


def _hints(cls: type) -> dict[str, Any]:
    """The dataclass's evaluated annotations ({} when they cannot be evaluated)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # annotations naming what is only imported under TYPE_CHECKING
        return {}

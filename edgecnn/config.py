"""Validated config dataclasses: one per pass, built from plain dicts (YAML) and back.

`from_dict(Cls, data, key="stages[1].prune")` checks every key and value against the dataclass
fields and raises a `RecipeError` naming the dotted key, the bad value and the allowed values;
a typo gets "did you mean". `__post_init__` of each config checks ranges and raises ValueError,
which is re-raised with the key path. `to_dict` gives JSON-ready data for manifests and reports.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union

from edgecnn.errors import RecipeError, did_you_mean

C = TypeVar("C")

_NONE = type(None)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is _NONE:
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            names = ", ".join(repr(a) for a in allowed)
            raise RecipeError(key, f"{value!r} is not allowed.{did_you_mean(str(value), map(str, allowed))} "
                                   f"Allowed: {names}.")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if _NONE in args:
                return None
            raise RecipeError(key, f"a value is required (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is _NONE:
                continue
            try:
                return _coerce(arg, value, key)
            except RecipeError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise RecipeError(key, f"{value!r} is not a valid {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value] if origin is list else value
        if not isinstance(value, (list, tuple)):
            raise RecipeError(key, f"expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise RecipeError(key, f"expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(key, f"expected a mapping, got {value!r}")
        vt = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise RecipeError(key, f"expected a mapping of {tp.__name__} settings, got {value!r}")
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RecipeError(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads '3e-3' as a string
            except ValueError:
                pass
        raise RecipeError(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(key, f"expected a string, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None, key: str = "") -> C:
    """Build a config dataclass from a mapping, validating every key and value."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    for name in data:
        if name not in fields:
            raise RecipeError(f"{prefix}{name}", f"unknown setting for {cls.__name__}."
                              f"{did_you_mean(name, fields)} Allowed: {', '.join(fields)}.")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except RecipeError as e:
        if key and not e.key.startswith(key):
            raise RecipeError(f"{prefix}{e.key}" if e.key else key, str(e).split(": ", 1)[-1]) from None
        raise
    except (ValueError, TypeError) as e:
        raise RecipeError(key or cls.__name__, str(e)) from None


def to_dict(cfg: Any) -> Any:
    """JSON-ready copy of a config (nested dataclasses, tuples as lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def check(condition: bool, field: str, message: str) -> None:
    """Range check for `__post_init__`: raises a RecipeError naming the field."""
    if not condition:
        raise RecipeError(field, message)

"""Typed, range-checked settings declared on dataclass fields.

A setting is a dataclass field whose ``metadata`` says what values are allowed::

    @dataclass
    class Options:
        short_side: int = setting(336, "shorter image side after resizing", min=1, max=4096)
        mode: str = setting("slide", "inference protocol", choices=("slide", "whole"))

:func:`coerce_settings` turns values given as Python objects, JSON values or command-line strings
(``"true"``, ``"448"``, ``"0.25,0.5"``) into the field's type and checks them against the metadata,
raising :class:`~fiftyone_cass.errors.InvalidInputError` naming the setting, the value and what is
allowed. One function for every entry point (Python keywords, ``--options`` JSON, ``-o key=value``,
the operator's options), so they accept and refuse the same values.

Metadata keys: ``help`` (text), ``min``/``max`` (inclusive bounds), ``gt`` (exclusive lower
bound), ``choices`` (allowed values, or a function returning them: registries that grow),
``item_min``/``item_max``/``item_gt`` (bounds of each element of a tuple), ``parse`` (a function
that converts and checks a value itself, raising ``ValueError``; ``allowed`` then says in words
what it accepts). Floats must be finite (NaN and infinities are refused). For an ``Optional``
field, ``None``, ``""``, ``"none"`` and ``"null"`` mean None. Other keys are free for the entry
points that present the settings (labels of the App's form, flags of the command line).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from typing import Any, Dict, Mapping, Optional, Tuple

from fiftyone_cass.errors import InvalidInputError, SettingError

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("none", "null", "")


def setting(default: Any, help: str = "", *, output: bool = True, **limits) -> Any:
    """A dataclass field with a default, a help text and the limits of :func:`coerce_settings`.
    ``output``: whether the setting changes what a run writes (masks, scores, embeddings); False
    for memory, placement, batching, progress and device settings. The settings hash that marks
    labels as done (``config_id``) is made of exactly the ``output`` settings
    (:func:`output_settings`)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not supported; use a tuple")
    return dataclasses.field(default=default, metadata=dict(help=help, output=bool(output), **limits))


def output_settings(cls) -> Tuple[str, ...]:
    """The names of the fields of ``cls`` declared as changing outputs (``setting(output=True)``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("output", True))


class _Bad(Exception):
    """A value outside what a setting allows (the message says what is allowed)."""


_HINTS: Dict[type, Dict[str, Any]] = {}


def _type_hints(cls) -> Dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def choices_of(meta: Mapping[str, Any]) -> Optional[Tuple[Any, ...]]:
    """The allowed values of a setting's metadata (None: any value of its type)."""
    choices = meta.get("choices")
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def _describe(tp, meta: Mapping[str, Any]) -> str:
    """What a setting allows, in words: 'an integer from 1 to 4096', 'a number > 0', ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if meta.get("allowed"):
        return meta["allowed"]
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return _describe(inner, meta) + " or none"
    if choices_of(meta) is not None:
        return "one of " + ", ".join(repr(c) for c in choices_of(meta))
    if tp is bool:
        return "a boolean (true/false, yes/no, 1/0)"
    if origin in (tuple, Tuple):
        item = _describe(args[0], {"min": meta.get("item_min"), "max": meta.get("item_max"), "gt": meta.get("item_gt")})
        return "a non-empty list of " + item.replace("a finite number", "finite numbers").replace("an integer", "integers")
    noun = "an integer" if tp is int else "a finite number" if tp is float else f"a {getattr(tp, '__name__', tp)}"
    lo, hi, gt = meta.get("min"), meta.get("max"), meta.get("gt")
    if lo is not None and hi is not None:
        return f"{noun} from {lo} to {hi}"
    parts = []
    if gt is not None:
        parts.append(f"> {gt}")
    if lo is not None:
        parts.append(f">= {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    return noun + (" " + " and ".join(parts) if parts else "")


def _scalar(tp, value, meta: Mapping[str, Any]):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Integral) and int(value) in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _Bad
    if tp is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, numbers.Integral):
            out = int(value)
        elif isinstance(value, str):
            try:
                out = int(value.strip())
            except ValueError:
                raise _Bad from None
        else:
            raise _Bad
    elif tp is float:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, numbers.Real):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise _Bad from None
        else:
            raise _Bad
        if not math.isfinite(out):
            raise _Bad
    elif tp is str:
        if not isinstance(value, str):
            raise _Bad
        out = value.strip()
    else:  # a type without coercion rules: taken as given
        return value
    choices = choices_of(meta)
    if choices is not None and out not in choices:
        raise _Bad
    lo, hi, gt = meta.get("min"), meta.get("max"), meta.get("gt")
    if (lo is not None and out < lo) or (hi is not None and out > hi) or (gt is not None and out <= gt):
        raise _Bad
    return out


def _coerce(tp, value, meta: Mapping[str, Any]):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
    if meta.get("parse") is not None:
        try:
            return meta["parse"](value)
        except InvalidInputError:  # a nested check (e.g. the Segmenter options) names its own setting
            raise
        except (ValueError, TypeError):
            raise _Bad from None
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, meta)
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") or text.startswith("("):
                text = text[1:-1] if text[-1:] in ")]" else text[1:]
            value = [v for v in (p.strip() for p in text.split(",")) if v]
        if not isinstance(value, (list, tuple)) or not value:
            raise _Bad
        item_meta = {"min": meta.get("item_min"), "max": meta.get("item_max"), "gt": meta.get("item_gt")}
        return tuple(_scalar(args[0], v, item_meta) for v in value)
    return _scalar(tp, value, meta)


def coerce_settings(cls, values: Mapping[str, Any], what: str = "option") -> Dict[str, Any]:
    """``values`` (a subset of the fields of dataclass ``cls``) converted to the fields' types and
    checked against their metadata. Raises :class:`InvalidInputError` on an unknown name, and
    :class:`~fiftyone_cass.errors.SettingError` (setting, value, what is allowed) on a value that
    is not allowed: ``"option short_side=0 is not allowed: an integer from 1 to 4096 (shorter
    image side after resizing)"``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InvalidInputError(
            f"unknown {what} name(s): {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    hints = _type_hints(cls)
    out = {}
    for name, value in values.items():
        f = fields[name]
        try:
            out[name] = _coerce(hints[name], value, f.metadata)
        except _Bad:
            raise SettingError(name, value, _describe(hints[name], f.metadata), f.metadata.get("help") or None,
                               what) from None
    return out


def check_dataclass(obj, what: str = "option"):
    """A copy of dataclass instance ``obj`` with every field coerced and checked
    (:func:`coerce_settings`)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return dataclasses.replace(obj, **coerce_settings(type(obj), values, what))


def describe_settings(cls) -> Dict[str, Dict[str, Optional[str]]]:
    """``{name: {"type": what is allowed, "help": help text, "default": repr}}`` (help screens)."""
    hints = _type_hints(cls)
    return {
        f.name: {"allowed": _describe(hints[f.name], f.metadata), "help": f.metadata.get("help"),
                 "default": repr(f.default)}
        for f in dataclasses.fields(cls)
    }


def setting_fields(cls) -> Dict[str, "dataclasses.Field"]:
    """``{name: dataclasses.Field}`` of a settings dataclass, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


def setting_is_optional(cls, name: str) -> bool:
    """Whether field ``name`` is declared ``Optional[...]`` (None is one of its values)."""
    tp = _type_hints(cls)[name]
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def setting_type(cls, name: str):
    """The declared type of field ``name`` without ``Optional`` (``int``, ``str``, ``typing.Any``...)."""
    tp = _type_hints(cls)[name]
    if setting_is_optional(cls, name):
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def make_settings(cls, values: Mapping[str, Any], what: str = "option"):
    """An instance of settings dataclass ``cls`` from ``values`` (a subset of its fields; the
    others keep their defaults), every given value coerced and checked (:func:`coerce_settings`)."""
    return cls(**coerce_settings(cls, values, what))


def split_settings(cls, values: Mapping[str, Any], what: str = "option"):
    """``(settings, rest)``: an instance of ``cls`` made from the names of ``values`` that are its
    fields (:func:`make_settings`), and a dict of the other names (for the next layer to check)."""
    names = setting_fields(cls)
    mine = {k: v for k, v in values.items() if k in names}
    return make_settings(cls, mine, what), {k: v for k, v in values.items() if k not in names}


def settings_doc(cls, indent: str = "    ") -> str:
    """The fields of ``cls`` as docstring lines: ``name (default): help; allowed values``."""
    lines = []
    for name, d in describe_settings(cls).items():
        lines.append(f"{indent}{name} ({d['default']}): {d['help'] or ''}; {d['allowed']}")
    return "\n".join(lines)

"""Frozen, keyword-only dataclasses validated from plain data (parsed YAML or JSON).

Why not pydantic: every command starts by loading the config, and importing pydantic and
building the config models cost 0.10-0.15 s of each start (bench/README.md), a large share of a
backup or verify of a small database. The config needs little of it: typed fields, a few bounds,
per-field checks, a tagged union and cross-field rules. This module gives exactly that.

A model subclasses :class:`Model` and annotates its fields; bounds and aliases go in
:func:`field`, checks in ``Annotated``. ``Cls.validate(data)`` converts a mapping (nested
mappings become models, strings become paths, ``15m`` becomes a timedelta), collects every
problem instead of stopping at the first, and raises :class:`ValidationError` whose ``errors``
are ``(location, message)`` pairs. Messages never repeat the offending value (it may be a
secret). Cross-field rules live in ``_check`` (raise ``ValueError``); they run whenever a model
is built, directly or validated. Unknown keys are refused.

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``Path``, ``timedelta``, ``Any``,
``Literal[...]``, ``X | None``, ``list[X]``, ``dict[str, X]``, models, a union of models that
each declare a ``type: Literal[...]`` field (chosen by the mapping's ``type``), and
``Annotated[X, check]`` where ``check(value)`` returns the value or raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, dataclass_transform

Loc = tuple[str | int, ...]
_FAIL: Any = object()
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int) -> timedelta:
    """'90s', '15m', '24h', '7d', '2w' (or plain seconds) -> timedelta."""
    if isinstance(text, int) and not isinstance(text, bool):
        return timedelta(seconds=text)
    m = _DURATION.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError("is not a duration like 15m, 24h, 7d")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


class ValidationError(ValueError):
    """Every problem found in one document: ``errors`` holds ``(location, message)`` pairs."""

    def __init__(self, errors: list[tuple[Loc, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{dotted(loc)}: {msg}" for loc, msg in errors))


def dotted(loc: Loc) -> str:
    return ".".join(str(x) for x in loc) or "<top>"


def field(
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    alias: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
) -> Any:
    """A model field: its default, the key it has in the document, its bounds."""
    meta = {
        k: v
        for k, v in (
            ("alias", alias),
            ("ge", ge),
            ("gt", gt),
            ("le", le),
            ("min_length", min_length),
            ("max_length", max_length),
        )
        if v is not None
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class Model:
    """Base of validated models: subclasses become frozen keyword-only dataclasses."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        """Cross-field rules: raise ValueError (reported at this model's location)."""

    @classmethod
    def validate(cls, data: Any, loc: Loc = ()) -> typing.Self:
        """Build from plain data, or raise ValidationError with every problem found."""
        errors: list[tuple[Loc, str]] = []
        value = _convert(data, cls, loc, errors)
        if errors:
            raise ValidationError(errors)
        return typing.cast(typing.Self, value)

    @classmethod
    def _fields(cls) -> list[_Field]:
        """The fields with their resolved annotations (resolved once, on first use)."""
        fields = _FIELDS.get(cls)
        if fields is None:
            hints = typing.get_type_hints(cls, include_extras=True)
            fields = _FIELDS[cls] = [
                _Field(f.name, f.metadata.get("alias", f.name), hints[f.name], f)
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.init
            ]
        return fields


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str  # the attribute
    key: str  # in the document (an alias when the name is taken, e.g. `schema`)
    tp: Any
    spec: dataclasses.Field[Any]

    @property
    def required(self) -> bool:
        return (
            self.spec.default is dataclasses.MISSING
            and self.spec.default_factory is dataclasses.MISSING
        )


_FIELDS: dict[type[Model], list[_Field]] = {}


def _build(cls: type[Model], data: Any, loc: Loc, errors: list[tuple[Loc, str]]) -> Any:
    if not isinstance(data, Mapping):
        errors.append((loc, "should be a mapping of keys to values"))
        return _FAIL
    before = len(errors)
    fields = cls._fields()
    known = {f.key for f in fields}
    errors.extend(((*loc, k), "unknown key (typo?)") for k in data if k not in known)
    kwargs: dict[str, Any] = {}
    for f in fields:
        where = (*loc, f.key)
        if f.key not in data:
            if f.required:
                errors.append((where, "required key is missing"))
            continue
        value = _convert(data[f.key], f.tp, where, errors)
        if value is not _FAIL:
            value = _bounded(value, f.spec.metadata, where, errors)
        if value is not _FAIL:
            kwargs[f.name] = value
    if len(errors) > before:
        return _FAIL
    try:
        return cls(**kwargs)
    except ValidationError as exc:  # a rule that validated a nested document itself
        errors.extend(exc.errors)
    except ValueError as exc:
        errors.append((loc, str(exc)))
    return _FAIL


def _bounded(value: Any, meta: Mapping[str, Any], loc: Loc, errors: list[tuple[Loc, str]]) -> Any:
    problem = None
    if "ge" in meta and value < meta["ge"]:
        problem = f"should be greater than or equal to {meta['ge']}"
    elif "gt" in meta and value <= meta["gt"]:
        problem = f"should be greater than {meta['gt']}"
    elif "le" in meta and value > meta["le"]:
        problem = f"should be less than or equal to {meta['le']}"
    elif "min_length" in meta and len(value) < meta["min_length"]:
        problem = f"should have at least {meta['min_length']} item(s)"
    elif "max_length" in meta and len(value) > meta["max_length"]:
        problem = f"should have at most {meta['max_length']} item(s)"
    if problem is not None:
        errors.append((loc, problem))
        return _FAIL
    return value


def _convert(value: Any, tp: Any, loc: Loc, errors: list[tuple[Loc, str]]) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *checks = typing.get_args(tp)
        value = _convert(value, base, loc, errors)
        for check in checks:
            if value is _FAIL:
                break
            try:
                value = check(value)
            except ValueError as exc:
                errors.append((loc, str(exc)))
                value = _FAIL
        return value
    if origin is Union or origin is types.UnionType:
        return _union(value, typing.get_args(tp), loc, errors)
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        return _fail(errors, loc, f"should be {_one_of(choices)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            return _fail(errors, loc, "should be a list")
        (item,) = typing.get_args(tp)
        out = [_convert(v, item, (*loc, i), errors) for i, v in enumerate(value)]
        return _FAIL if any(v is _FAIL for v in out) else out
    if origin is dict:
        if not isinstance(value, Mapping):
            return _fail(errors, loc, "should be a mapping of keys to values")
        _, item = typing.get_args(tp)
        out_d = {}
        for k, v in value.items():
            if not isinstance(k, str):
                errors.append(((*loc, str(k)), "keys should be strings"))
                continue
            out_d[k] = _convert(v, item, (*loc, k), errors)
        return _FAIL if any(v is _FAIL for v in out_d.values()) else out_d
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, Model):
        return value if isinstance(value, tp) else _build(tp, value, loc, errors)
    scalar = _SCALARS.get(tp)
    if scalar is None:
        raise TypeError(f"vaultkeeper.model cannot validate {tp!r}")
    try:
        return scalar(value)
    except (TypeError, ValueError) as exc:
        return _fail(errors, loc, str(exc))


def _union(value: Any, arms: tuple[Any, ...], loc: Loc, errors: list[tuple[Loc, str]]) -> Any:
    if value is None and type(None) in arms:
        return None
    rest = [a for a in arms if a is not type(None)]
    if len(rest) == 1:
        return _convert(value, rest[0], loc, errors)
    if not all(isinstance(a, type) and issubclass(a, Model) for a in rest):
        raise TypeError(f"vaultkeeper.model: a union of models only, not {arms!r}")
    if isinstance(value, tuple(rest)):
        return value
    if not isinstance(value, Mapping):
        return _fail(errors, loc, "should be a mapping of keys to values")
    tags = {
        tag: arm
        for arm in rest
        for f in arm._fields()  # resolved once per model, not per document
        if f.name == "type"
        for tag in typing.get_args(f.tp)
    }
    if "type" not in value:
        return _fail(errors, (*loc, "type"), f"required key is missing ({_one_of(tuple(tags))})")
    arm = tags.get(value["type"])
    if arm is None:
        return _fail(errors, (*loc, "type"), f"should be {_one_of(tuple(tags))}")
    return _convert(value, arm, loc, errors)


def _fail(errors: list[tuple[Loc, str]], loc: Loc, msg: str) -> Any:
    errors.append((loc, msg))
    return _FAIL


def _one_of(choices: tuple[Any, ...]) -> str:
    shown = [repr(c) for c in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("should be a string")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("should be an integer")
    if isinstance(v, float) and not v.is_integer():
        raise ValueError("should be an integer")
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("should be a number")
    return float(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("should be true or false")
    return v


def _path(v: Any) -> Path:
    if isinstance(v, Path):
        return v
    if not isinstance(v, str) or not v:
        raise ValueError("should be a path")
    return Path(v)


def _timedelta(v: Any) -> timedelta:
    return v if isinstance(v, timedelta) else parse_duration(v)


_SCALARS: dict[Any, Callable[[Any], Any]] = {
    str: _str,
    int: _int,
    float: _float,
    bool: _bool,
    Path: _path,
    timedelta: _timedelta,
}

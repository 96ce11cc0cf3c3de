"""Configuration mappings into msgspec Structs, one way for the broker and every issuer. A
contract module: imports only ``broker.clock`` and ``broker.errors``.

:func:`decode` turns a raw mapping (parsed YAML or JSON) into a Struct:

- every ``timedelta`` field takes the broker's one duration syntax
  (:func:`broker.clock.parse_duration`: ``"90s"``, ``"15m"``, ``"1h30m"``, ``"200ms"``, a number
  of seconds), which msgspec alone does not know (it reads ISO 8601 durations);
- a key a Struct does not declare is an error, whether or not the Struct sets
  ``forbid_unknown_fields`` (a typo must stop start-up, never be ignored);
- a Struct's ``__post_init__`` runs (msgspec calls it); a ``ValueError`` raised there is reported
  like any other problem;
- every problem raises :class:`broker.errors.ConfigError` whose message starts with the dotted
  path of the key (``reaper.poll_interval: not a duration: 'soon' ...``). Dictionary keys are
  named as written; msgspec's own messages name a dictionary entry ``[...]``.

:func:`json_schema` gives the JSON Schema of such Structs, with durations described as this
syntax rather than ISO 8601.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from broker.clock import format_duration, parse_duration
from broker.errors import ConfigError

__all__ = [
    "DURATION_SCHEMA",
    "check_duration",
    "check_ttls",
    "decode",
    "json_schema",
    "key_path",
]

T = TypeVar("T")

#: How a duration is written, as JSON Schema: ``"1h30m"``, ``"200ms"``, ``"90"``, or a number
#: of seconds. (The upper bound, :data:`broker.clock.MAX_DURATION`, is checked on decoding.)
#: The pattern has no lookaround, so RE2-based validators (helm's, Go's) accept it too.
DURATION_SCHEMA: dict[str, Any] = {
    "description": "a duration: 200ms, 90s, 15m, 1h, 1h30m, 7d, or a number of seconds",
    "anyOf": [
        {
            "type": "string",
            "pattern": (
                r"^\s*(?:[0-9]+"
                r"|[0-9]+d(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?(?:[0-9]+ms)?"
                r"|[0-9]+h(?:[0-9]+m)?(?:[0-9]+s)?(?:[0-9]+ms)?"
                r"|[0-9]+m(?:[0-9]+s)?(?:[0-9]+ms)?"
                r"|[0-9]+s(?:[0-9]+ms)?"
                r"|[0-9]+ms)\s*$"
            ),
        },
        {"type": "number", "minimum": 0},
    ],
}

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_AT = " - at `$"
_SEQUENCES = mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType


def key_path(parent: str, key: object) -> str:
    """``parent.key``, or ``parent['odd key']`` when the key is not a plain word."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{parent}[{key}]"
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{key!r}]"


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}" if path else message)


def decode(raw: object, type_: type[T], *, at: str = "", strict: bool = True) -> T:
    """``raw`` as a ``type_`` (a msgspec Struct), or ConfigError naming the key.

    ``at`` is the path of ``raw`` in the caller's document, prefixed to every key in a message
    (``issuers.pg.config``); ``strict=False`` lets msgspec coerce strings to numbers and
    booleans (the broker's own settings do; issuer configs do not)."""
    prepared = _prepare(mi.type_info(type_), raw, at)
    try:
        return msgspec.convert(prepared, type_, strict=strict)
    except msgspec.ValidationError as exc:
        raise _located(str(exc), at) from None


def _located(message: str, at: str) -> ConfigError:
    """msgspec's ``Expected `int`, got `str` - at `$.reaper.batch_size``` as
    ``reaper.batch_size: Expected `int`, got `str```."""
    text, sep, where = message.rpartition(_AT)
    if not sep:
        text, where = message, ""
    rest = where.removesuffix("`")
    path = f"{at}{rest}" if at else rest.removeprefix(".")
    return _fail(path, text)


def _prepare(info: mi.Type, value: Any, path: str) -> Any:
    """Walk ``value`` along ``info``: durations parsed, unknown keys refused, everything else
    passed through for msgspec to check."""
    if isinstance(info, mi.TimeDeltaType):
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise _fail(path, str(exc)) from None
    if isinstance(info, mi.UnionType):
        chosen = _member(info.types, value)
        return value if chosen is None else _prepare(chosen, value, path)
    if isinstance(info, mi.StructType) and isinstance(value, Mapping):
        return _struct(info, value, path)
    if isinstance(info, mi.DictType) and isinstance(value, Mapping):
        return {k: _prepare(info.value_type, v, key_path(path, k)) for k, v in value.items()}
    if isinstance(info, _SEQUENCES) and isinstance(value, list):
        return [_prepare(info.item_type, v, key_path(path, i)) for i, v in enumerate(value)]
    if (
        isinstance(info, mi.TupleType)
        and isinstance(value, list)
        and len(value) == len(info.item_types)
    ):
        return [
            _prepare(t, v, key_path(path, i))
            for i, (t, v) in enumerate(zip(info.item_types, value, strict=True))
        ]
    return value


def _member(types: Iterable[mi.Type], value: Any) -> mi.Type | None:
    """The member of a union that a value of this JSON kind is meant for, if any needs walking."""
    for t in types:
        if isinstance(t, mi.TimeDeltaType) and (
            isinstance(value, str | int | float | timedelta) and not isinstance(value, bool)
        ):
            return t
    if isinstance(value, Mapping):
        structs = [t for t in types if isinstance(t, mi.StructType)]
        for t in structs:
            if t.tag_field is not None and value.get(t.tag_field) == t.tag:
                return t
        if len(structs) == 1:
            return structs[0]
        return next((t for t in types if isinstance(t, mi.DictType)), None)
    if isinstance(value, list):
        return next((t for t in types if isinstance(t, _SEQUENCES | mi.TupleType)), None)
    return None


def _struct(info: mi.StructType, value: Mapping[Any, Any], path: str) -> dict[Any, Any]:
    fields = {f.encode_name: f.type for f in info.fields}
    known = set(fields) | ({info.tag_field} if info.tag_field else set())
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(fields), n=1)
            also = (
                f"; did you mean {hint[0]!r}?"
                if hint
                else f" (allowed: {', '.join(sorted(fields))})"
            )
            raise _fail(key_path(path, key), f"unknown key{also}")
        out[key] = _prepare(fields[key], item, key_path(path, key)) if key in fields else item
    return out


def check_duration(
    key: str,
    value: timedelta,
    *,
    at_least: timedelta | None = None,
    at_most: timedelta | None = None,
) -> None:
    """Raise ValueError (``max_ttl: must be at least 1s, got 0s``) when ``value`` is out of
    bounds. For a Struct's ``__post_init__``."""
    low_ok = at_least is None or value >= at_least
    high_ok = at_most is None or value <= at_most
    if low_ok and high_ok:
        return
    got = format_duration(value)
    if at_least is not None and at_most is not None:
        bounds = f"between {format_duration(at_least)} and {format_duration(at_most)}"
    elif at_least is not None:
        bounds = f"at least {format_duration(at_least)}"
    else:
        bounds = f"at most {format_duration(at_most or value)}"
    raise ValueError(f"{key}: must be {bounds}, got {got}")


def check_ttls(
    max_ttl: timedelta,
    default_ttl: timedelta,
    *,
    at_least: timedelta = timedelta(seconds=1),
    at_most: timedelta | None = None,
) -> None:
    """The rule of an issuer's ``max_ttl`` and ``default_ttl``: both within the bounds, and
    ``default_ttl <= max_ttl``. Raises ValueError naming the key, for ``__post_init__``."""
    check_duration("max_ttl", max_ttl, at_least=at_least, at_most=at_most)
    check_duration("default_ttl", default_ttl, at_least=at_least, at_most=at_most)
    if default_ttl > max_ttl:
        raise ValueError("default_ttl must not exceed max_ttl")


def _durations_in_schema(node: Any) -> Any:
    """msgspec describes a ``timedelta`` as an ISO 8601 string (``format: duration``); ours is
    :data:`DURATION_SCHEMA`, with the default written in our syntax."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") == "duration":
            out = {k: v for k, v in node.items() if k not in ("type", "format")}
            if isinstance(out.get("default"), str):
                default = msgspec.convert(out["default"], timedelta)
                out["default"] = format_duration(default)
            return {**DURATION_SCHEMA, **out}
        return {k: _durations_in_schema(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_durations_in_schema(v) for v in node]
    return node


def json_schema(
    types: Iterable[type], *, ref_template: str = "#/$defs/{name}"
) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """The JSON Schemas of ``types`` and their shared components (``$defs``), durations written
    as :data:`DURATION_SCHEMA` and every Struct closed to unknown keys (as :func:`decode` is)."""
    schemas, components = msgspec.json.schema_components(list(types), ref_template=ref_template)
    for component in components.values():
        if component.get("type") == "object" and "properties" in component:
            component["additionalProperties"] = False
    return tuple(schemas), _durations_in_schema(components)

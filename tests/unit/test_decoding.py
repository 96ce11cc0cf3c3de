"""broker.decoding: one way from a config mapping to a Struct, for the broker and every issuer —
the one duration syntax wherever a timedelta is expected, unknown keys refused and named with
their path, __post_init__ rules reported the same way."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.clock import MAX_DURATION, format_duration, parse_duration
from broker.decoding import check_duration, check_ttls, decode, key_path
from broker.errors import ConfigError


class Inner(msgspec.Struct, frozen=True, kw_only=True):  # no forbid_unknown_fields on purpose
    every: timedelta = timedelta(seconds=1)
    names: tuple[str, ...] = ()


class Outer(msgspec.Struct, frozen=True, kw_only=True):
    ttl: timedelta = timedelta(minutes=1)
    maybe: timedelta | None = None
    by_name: dict[str, Inner] = msgspec.field(default_factory=dict)
    listed: list[Inner] = msgspec.field(default_factory=list)
    either: dict[str, Inner] | list[str] = msgspec.field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count: must not be negative")


def test_durations_are_read_wherever_a_timedelta_is_expected() -> None:
    got = decode(
        {
            "ttl": "1h30m",
            "maybe": 90,
            "by_name": {"a b": {"every": "200ms"}},
            "listed": [{"every": "7d"}],
            "either": {"x": {"every": "15m"}},
        },
        Outer,
    )
    assert got.ttl == timedelta(hours=1, minutes=30)
    assert got.maybe == timedelta(seconds=90)
    assert got.by_name["a b"].every == timedelta(milliseconds=200)
    assert got.listed[0].every == timedelta(days=7)
    assert got.either == {"x": Inner(every=timedelta(minutes=15))}
    assert decode({"either": ["a"]}, Outer).either == ["a"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({"ttl": "soon"}, "ttl: not a duration: 'soon'", id="a bad duration"),
        pytest.param({"tll": "1h"}, "tll: unknown key; did you mean 'ttl'?", id="a typo"),
        pytest.param(
            {"by_name": {"a b": {"evry": "1s"}}},
            "by_name['a b'].evry: unknown key; did you mean 'every'?",
            id="an unknown key in a struct without forbid_unknown_fields, under an odd dict key",
        ),
        pytest.param(
            {"listed": [{}, {"every": "x"}]},
            "listed[1].every: not a duration",
            id="a bad duration in a list",
        ),
        pytest.param(
            {"either": {"k": {"zzz": 1}}},
            "either.k.zzz: unknown key (allowed: every, names)",
            id="an unknown key under a union",
        ),
        pytest.param({"count": "3"}, "count: Expected `int`, got `str`", id="a wrong type"),
        pytest.param({"count": -1}, "count: must not be negative", id="a __post_init__ rule"),
        pytest.param({"ttl": f"{MAX_DURATION.days + 1}d"}, "ttl: duration too long", id="too long"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        decode(raw, Outer)
    assert caught.value.message.startswith(message)


def test_at_prefixes_the_callers_path() -> None:
    with pytest.raises(ConfigError, match=r"^issuers\.x\.config\.ttl: not a duration"):
        decode({"ttl": "soon"}, Outer, at="issuers.x.config")
    with pytest.raises(ConfigError, match=r"^issuers\.x\.config: count: must not be negative"):
        decode({"count": -1}, Outer, at="issuers.x.config")


def test_strict_false_coerces_strings_and_strict_does_not() -> None:
    assert decode({"count": "3"}, Outer, strict=False).count == 3
    with pytest.raises(ConfigError):
        decode({"count": "3"}, Outer)


@pytest.mark.parametrize(
    ("parent", "key", "expected"),
    [
        pytest.param("", "plain", "plain", id="a top-level word"),
        pytest.param("a", "b_c-1", "a.b_c-1", id="a nested word"),
        pytest.param("a", "ssh://x", "a['ssh://x']", id="a key that is not a word"),
        pytest.param("a", 3, "a[3]", id="a list index"),
    ],
)
def test_key_paths_read_as_written(parent: str, key: object, expected: str) -> None:
    assert key_path(parent, key) == expected


@pytest.mark.parametrize(
    ("bounds", "value", "message"),
    [
        pytest.param({"at_least": timedelta(seconds=1)}, timedelta(0), "at least 1s, got 0s"),
        pytest.param({"at_most": timedelta(hours=1)}, timedelta(hours=2), "at most 1h, got 2h"),
        pytest.param(
            {"at_least": timedelta(minutes=16), "at_most": timedelta(hours=12)},
            timedelta(minutes=15),
            "between 16m and 12h, got 15m",
        ),
    ],
)
def test_duration_bounds_name_the_key_and_both_values(
    bounds: dict[str, timedelta], value: timedelta, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^max_ttl: must be {message}$"):
        check_duration("max_ttl", value, **bounds)
    check_duration("max_ttl", timedelta(minutes=30), **bounds)  # within: no error


@given(st.integers(0, MAX_DURATION.days * 86_400_000))
def test_format_duration_reads_back_as_the_same_duration(ms: int) -> None:
    value = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    ("max_ttl", "default_ttl", "message"),
    [
        pytest.param("1h", "2h", "default_ttl must not exceed max_ttl", id="default above max"),
        pytest.param("0s", "0s", "max_ttl: must be at least 1s, got 0s", id="a zero max"),
        pytest.param("1h", "500ms", "default_ttl: must be at least 1s", id="a default too short"),
    ],
)
def test_the_ttl_rule_of_every_issuer(max_ttl: str, default_ttl: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        check_ttls(parse_duration(max_ttl), parse_duration(default_ttl))
    check_ttls(timedelta(hours=1), timedelta(minutes=15))  # the usual pair passes


@pytest.mark.parametrize(
    "text",
    [
        "1h30m",
        "200ms",
        "90",
        "5m",
        "5ms",
        "7d",
        "1d2h3m4s5ms",
        "1h1ms",
        " 15m ",
        "",
        "m",
        "5s1h",
        "5mm",
        "1.5",
        "-1",
        "1e3",
        "²",
    ],
)
def test_the_schema_duration_pattern_agrees_with_the_parser_and_needs_no_lookaround(
    text: str,
) -> None:
    import re

    from broker.clock import parse_duration
    from broker.decoding import DURATION_SCHEMA

    pattern = DURATION_SCHEMA["anyOf"][0]["pattern"]
    assert "(?=" not in pattern  # RE2 (helm) refuses lookaround
    assert "(?!" not in pattern
    try:
        parse_duration(text)
        parses = True
    except ValueError:
        parses = False
    assert bool(re.match(pattern, text)) is parses

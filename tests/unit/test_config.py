"""Strict settings: unknown keys, bad durations and missing files stop start-up, named."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.config import json_schema, load_settings, parse_duration
from broker.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("90s", timedelta(seconds=90), id="seconds with a unit"),
        pytest.param("15m", timedelta(minutes=15), id="minutes"),
        pytest.param("1h30m", timedelta(hours=1, minutes=30), id="hours and minutes"),
        pytest.param("3600", timedelta(hours=1), id="a bare number is seconds"),
        pytest.param("200ms", timedelta(milliseconds=200), id="milliseconds"),
        pytest.param("1m30s", timedelta(seconds=90), id="minutes and seconds"),
        pytest.param(42, timedelta(seconds=42), id="an int is seconds"),
    ],
)
def test_durations_parse(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "1w", "h", "-5", "1.5h", True, None, "10 m", -1])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59))
def test_duration_round_trip(h: int, m: int, s: int) -> None:
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s or not (h or m) else "")
    assert parse_duration(text) == timedelta(hours=h, minutes=m, seconds=s)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "jit.yaml"
    p.write_text(text)
    return p


def test_a_valid_config_loads_and_relative_policy_dirs_follow_the_file(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            "redis_url: redis://127.0.0.1:6379/3\npolicy_dir: pol\nreaper:\n  poll_interval: 1s\n",
        ),
        env={},
    )
    assert s.redis_url.endswith("/3")
    assert s.policy_dir == str(tmp_path / "pol")
    assert s.reaper.poll_interval == timedelta(seconds=1)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param("redis_ur1: x\n", "redis_ur1", id="an unknown top-level key is named"),
        pytest.param(
            "reaper:\n  pol_interval: 1s\n", "pol_interval", id="an unknown nested key is named"
        ),
        pytest.param("reaper:\n  poll_interval: soon\n", "duration", id="a bad duration is named"),
        pytest.param("- a\n- b\n", "mapping", id="a list is not a config"),
        pytest.param("port: [1\n", "YAML", id="broken YAML"),
        pytest.param(
            "identity:\n  - {name: gh, issuer: https://x, audiences: [a], algorithms: [HS256]}\n",
            "HS256",
            id="a symmetric algorithm for a third-party issuer is refused",
        ),
        pytest.param(
            "identity:\n  - {name: gh, issuer: https://x, audiences: []}\n",
            "audience",
            id="an identity issuer without an audience is refused",
        ),
    ],
)
def test_a_bad_config_fails_with_a_message_naming_the_problem(
    tmp_path: Path, text: str, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(write(tmp_path, text), env={})


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_environment_overrides_apply(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, "{}\n"),
        env={"JIT_REDIS_URL": "redis://10.0.0.1:6379/0", "JIT_PORT": "9000"},
    )
    assert s.redis_url == "redis://10.0.0.1:6379/0"
    assert s.port == 9000


def test_the_json_schema_describes_every_top_level_key() -> None:
    schema = json_schema()
    props = schema["$defs"]["Settings"]["properties"]
    assert {"redis_url", "identity", "issuers", "reaper", "limits"} <= set(props)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("abc", id="letters"),
        pytest.param("0", id="zero"),
        pytest.param("65536", id="above the range"),
        pytest.param("-1", id="negative"),
        pytest.param("\uff18\uff12\uff10\uff10", id="non-ASCII digits"),
        pytest.param("", id="empty"),
    ],
)
def test_a_port_override_that_is_not_a_port_number_is_named(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "{}\n"), env={"JIT_PORT": value})
    assert caught.value.message == "JIT_PORT: not a port number (1 to 65535)"


def test_a_port_in_the_file_outside_the_range_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"port: Expected `int` <= 65535"):
        load_settings(write(tmp_path, "port: 70000\n"), env={})

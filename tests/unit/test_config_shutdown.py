"""The ``shutdown:`` block (docs/configuration.md): durations in the one syntax, bounded, unknown
keys named — a replica that would drain forever, or not at all, does not start."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.config import settings_from_mapping
from broker.errors import ConfigError


def test_the_defaults_drain_at_once_and_wait_past_the_longest_long_poll() -> None:
    s = settings_from_mapping({})
    assert s.shutdown.drain_delay == timedelta(0)
    assert s.shutdown.drain_timeout == timedelta(seconds=65)
    assert s.shutdown.drain_timeout > s.approvals.max_wait


def test_durations_are_read_in_the_projects_syntax() -> None:
    s = settings_from_mapping({"shutdown": {"drain_delay": "5s", "drain_timeout": "1m30s"}})
    assert s.shutdown.drain_delay == timedelta(seconds=5)
    assert s.shutdown.drain_timeout == timedelta(seconds=90)


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ({"drain_dealy": "5s"}, "shutdown.drain_dealy: unknown key"),
        ({"drain_delay": "soon"}, "shutdown.drain_delay: not a duration"),
        ({"drain_delay": "11m"}, "shutdown.drain_delay: must be at most 10m"),
        ({"drain_timeout": "0s"}, "shutdown.drain_timeout: must be between 1s and 30m"),
        ({"drain_timeout": "31m"}, "shutdown.drain_timeout: must be between 1s and 30m"),
    ],
)
def test_a_bad_shutdown_block_is_refused_naming_the_key(block: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        settings_from_mapping({"shutdown": block})

"""The only module that reads wall time. Everything else takes a :class:`Clock`.

A contract module: imports nothing else from ``broker``. Tests use
``broker.testing.FakeClock``.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "SystemClock", "from_ms", "parse_duration", "to_ms"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for measuring intervals."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


def to_ms(t: datetime) -> int:
    """Milliseconds since the epoch (the unit used for scores and fields in Redis)."""
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return int(t.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")


def parse_duration(value: object) -> timedelta:
    """``"1h30m"``, ``"90s"``, ``"15m"``, ``"200ms"``, ``"7d"``, ``3600`` (seconds) → timedelta.

    The one duration syntax of the broker's config, policies and issuer configs. Raises
    ValueError (callers turn it into a ConfigError or PolicyError naming the key)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return timedelta(seconds=int(text))
        m = _DURATION.match(text)
        if text and m and any(m.groups()):
            d, h, mi, s, ms = (int(g) if g else 0 for g in m.groups())
            return timedelta(days=d, hours=h, minutes=mi, seconds=s, milliseconds=ms)
    raise ValueError(f"not a duration: {value!r} (use e.g. 200ms, 90s, 15m, 1h, 1h30m, 7d)")

"""Time for the broker: the :class:`Clock` that server code takes instead of reading the time
itself (tests use ``broker.testing.FakeClock``), the system clock behind it, the millisecond
conversions used in Redis, and the one duration syntax of configs, policies and the API
(:func:`parse_duration`, and :func:`format_duration` for messages).

A contract module: imports nothing from ``broker``. Outside this module only the CLI, a client
at the edge, reads the wall clock directly (for what it prints and the creation time of a new
key); the approvals long-poll times its wait on the event loop's own monotonic clock.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = [
    "MAX_DURATION",
    "Clock",
    "SystemClock",
    "format_duration",
    "from_ms",
    "parse_duration",
    "to_ms",
]


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


_DURATION = re.compile(
    r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m(?!s))?(?:([0-9]+)s)?(?:([0-9]+)ms)?", re.ASCII
)
_SECONDS = re.compile(r"[0-9]+", re.ASCII)

#: The longest duration anything in the broker accepts (far beyond any sane TTL; what a
#: ``timedelta`` and a millisecond score in Redis can both hold with room to spare).
MAX_DURATION = timedelta(days=36500)
_UNIT_MS = (86_400_000, 3_600_000, 60_000, 1000, 1)


def parse_duration(value: object) -> timedelta:
    """``"1h30m"``, ``"90s"``, ``"15m"``, ``"200ms"``, ``"7d"``, ``3600`` (seconds) → timedelta.

    The one duration syntax of the broker's config, policies, issuer configs and the API. Only
    ASCII digits; at most :data:`MAX_DURATION`. Raises ValueError (callers turn it into a
    ConfigError, PolicyError or InvalidRequest naming the key)."""
    if isinstance(value, timedelta):
        return _bounded(value.total_seconds(), value)
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value != value or value < 0:  # NaN or negative
            raise ValueError(f"not a non-negative duration: {value!r}")
        return _bounded(float(value), None)
    if isinstance(value, str):
        text = value.strip()
        if _SECONDS.fullmatch(text):
            return _bounded(float(int(text)), None)
        m = _DURATION.fullmatch(text)
        if text and m and any(m.groups()):
            ms = sum(int(g) * unit for g, unit in zip(m.groups(), _UNIT_MS, strict=True) if g)
            return _bounded(ms / 1000, None)
    shown = value if not isinstance(value, str) else value[:40]
    raise ValueError(f"not a duration: {shown!r} (use e.g. 200ms, 90s, 15m, 1h, 1h30m, 7d)")


def _bounded(seconds: float, ready: timedelta | None) -> timedelta:
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration too long (at most {MAX_DURATION.days} days)")
    return ready if ready is not None else timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """A timedelta in the syntax :func:`parse_duration` reads (``"1h30m"``, ``"200ms"``, ``"0s"``),
    for messages that name a configured value. Sub-millisecond parts are dropped."""
    ms = value // timedelta(milliseconds=1)
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    parts = []
    for unit, size in zip(("d", "h", "m", "s", "ms"), _UNIT_MS, strict=True):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + ("".join(parts) or "0s")

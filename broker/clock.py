"""The only module that reads wall time. Everything else takes a :class:`Clock`.

A contract module: imports nothing else from ``broker``. Tests use
``broker.testing.FakeClock``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock", "from_ms", "to_ms"]


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

"""A clock that moves only when told to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["FakeClock"]


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, delta: timedelta | float) -> None:
        d = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if d < timedelta(0):
            raise ValueError("time does not go backwards")
        self._now += d
        self._mono += d.total_seconds()

    def set(self, when: datetime) -> None:
        self.advance(when - self._now)

"""Issuer health: one backend that is down degrades only its own issuer.

Every replica checks each issuer's backend on its own (``check_health()``, bounded by a
timeout): every ``interval`` while healthy, every ``retry_interval`` while not. An issuer whose
check fails is *degraded*: requests for it get a 503 with ``Retry-After`` before anything is
written, while every other issuer keeps issuing, the replica stays ready and its reaper keeps
revoking. When a degraded issuer answers again (a passing check, or a revocation that
succeeds), the revocations waiting for it in backoff are retried at once instead of when
their backoff ends (``on_recovery``).

Start-up runs one round of checks and never fails because a backend is down (a replica that
cannot start during a backend outage would turn the outage into a broker outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.clock import Clock
from broker.errors import BrokerError, IssuerUnavailable
from broker.issuer import Issuer

__all__ = ["IssuerHealth", "IssuerStatus"]

log = logging.getLogger("jit.health")


@dataclass(frozen=True)
class IssuerStatus:
    healthy: bool
    since: datetime
    error: str | None = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BrokerError):
        return f"{type(exc).__name__}: {exc.message}"[:300]
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


class IssuerHealth:
    def __init__(
        self,
        issuers: Mapping[str, Issuer],
        clock: Clock,
        *,
        interval: timedelta = timedelta(seconds=10),
        retry_interval: timedelta = timedelta(seconds=2),
        timeout: timedelta = timedelta(seconds=5),
        on_recovery: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.issuers = issuers
        self.clock = clock
        self.interval = interval
        self.retry_interval = retry_interval
        self.timeout = timeout
        self.on_recovery = on_recovery
        now = clock.now()
        self.status: dict[str, IssuerStatus] = {n: IssuerStatus(True, now) for n in issuers}
        self._recoveries: set[asyncio.Task[object]] = set()

    def healthy(self, name: str) -> bool:
        status = self.status.get(name)
        return status is None or status.healthy

    def require(self, name: str) -> None:
        """Raise IssuerUnavailable (503) for a degraded issuer: refuse before writing."""
        status = self.status.get(name)
        if status is not None and not status.healthy:
            raise IssuerUnavailable(
                f"issuer {name!r} is unavailable ({status.error or 'its health check fails'});"
                " retry later"
            )

    async def check(self, name: str) -> IssuerStatus:
        try:
            await asyncio.wait_for(self.issuers[name].check_health(), self.timeout.total_seconds())
        except Exception as exc:
            self.failed(name, exc)
        else:
            self.succeeded(name)
        return self.status[name]

    async def check_all(self) -> dict[str, IssuerStatus]:
        await asyncio.gather(*(self.check(n) for n in self.issuers))
        return dict(self.status)

    def failed(self, name: str, exc: BaseException) -> None:
        """A health check (or a call the caller knows means "down") failed."""
        before = self.status.get(name)
        error = _describe(exc)
        if before is None or before.healthy:
            log.warning("issuer %s is unavailable: %s", name, error)
            self.status[name] = IssuerStatus(False, self.clock.now(), error)
        else:
            self.status[name] = IssuerStatus(False, before.since, error)

    def succeeded(self, name: str) -> None:
        """A check passed or a backend call succeeded: back to healthy, and if it was
        degraded, retry what waits for it."""
        before = self.status.get(name)
        if before is not None and before.healthy:
            return
        self.status[name] = IssuerStatus(True, self.clock.now())
        if before is not None:
            log.warning("issuer %s answers again (down since %s)", name, before.since)
            if self.on_recovery is not None:
                task = asyncio.ensure_future(self.on_recovery(name))
                self._recoveries.add(task)
                task.add_done_callback(self._recoveries.discard)

    def report(self) -> dict[str, str]:
        return {
            f"issuer:{n}": "ok" if s.healthy else f"degraded: {s.error}"
            for n, s in self.status.items()
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Check every issuer on its own schedule until ``stop``."""
        await asyncio.gather(*(self._watch(n, stop) for n in self.issuers))

    async def _watch(self, name: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = self.interval if self.healthy(name) else self.retry_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait.total_seconds())
            if not stop.is_set():
                await self.check(name)

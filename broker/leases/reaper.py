"""The reaper: revokes what is due, in every replica, without a leader.

Each round claims up to ``batch_size`` due lease ids with one Lua script that pushes their due
time a visibility timeout ahead (so a replica that dies holding a claim leaves them to the
others), then hands each to :meth:`LeaseManager.reap`. Between rounds it sleeps until the next
due entry or ``poll_interval``, whichever is sooner. Start-up costs nothing: no lease is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from broker.clock import Clock, to_ms
from broker.config import ReaperSettings
from broker.leases.manager import LeaseManager

__all__ = ["Reaper"]

log = logging.getLogger("jit.reaper")


class Reaper:
    def __init__(
        self,
        manager: LeaseManager,
        settings: ReaperSettings,
        clock: Clock,
        replica_id: str | None = None,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.clock = clock
        self.replica_id = replica_id or manager.replica_id

    async def run_once(self) -> int:
        """One round: claim what is due now and process it. Returns how many were claimed."""
        s = self.settings
        now = self.clock.now()
        ids = await self.manager.store.claim_due(
            now_ms=to_ms(now),
            until_ms=to_ms(now + s.visibility_timeout),
            limit=s.batch_size,
        )
        if not ids:
            return 0
        sem = asyncio.Semaphore(s.concurrency)

        async def one(lease_id: str) -> None:
            async with sem:
                try:
                    await self.manager.reap(lease_id)
                except Exception as exc:  # left claimed: due again after the visibility timeout
                    log.warning("reaping lease %s failed: %s", lease_id, type(exc).__name__)

        await asyncio.gather(*(one(i) for i in ids))
        return len(ids)

    async def run(self, stop: asyncio.Event) -> None:
        """Reap until ``stop`` is set. Redis outages are logged and waited out."""
        s = self.settings
        poll = s.poll_interval.total_seconds()
        while not stop.is_set():
            wait = poll
            try:
                n = await self.run_once()
                if n >= s.batch_size:
                    continue  # more may be due: no sleep
                nxt = await self.manager.store.next_due_ms()
                if nxt is not None:
                    wait = min(poll, max(0.0, (nxt - to_ms(self.clock.now())) / 1000))
            except (RedisError, OSError) as exc:
                log.warning("reaper: Redis unavailable (%s); retrying", type(exc).__name__)
                wait = max(poll, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

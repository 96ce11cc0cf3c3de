"""The reaper: revokes what is due, in every replica, without a leader.

It claims due lease ids with one Lua script that pushes their due time a visibility timeout
ahead (a replica that dies holding a claim leaves them to the others) and hands each to
:meth:`LeaseManager.reap` as its own task: it never waits for a batch to finish before it
claims more, and each issuer has its own slots (``concurrency`` revocations in flight) and a
queue. A healthy issuer's leases queue for its slots (a burst of expiries is revoked as fast
as the backend answers); a lease of a degraded issuer (a backend that timed out or is down)
that finds no free slot goes back on the due index for a moment instead of queueing, so one
hung backend delays no other issuer's revocations (see :class:`IssuerSlots`). Between
rounds it sleeps until the next due entry or ``poll_interval``, whichever is sooner.

Start-up costs nothing: no lease is loaded. On stop (the replica drains, ADR 0051) it gives
back at once the claims it has not begun to work on (revocations queued for their issuer's
slot), lets the revocations in flight finish (each bounded by ``issuer_timeout``), and gives
back whatever it had to cancel: their due entries are due now again and its revocation locks
dropped (:meth:`LeaseStore.release`), so another replica takes them at once instead of after
the visibility timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisClusterException, RedisError

from broker.clock import Clock, to_ms
from broker.config import ReaperSettings
from broker.leases.manager import IssuerSlots, LeaseManager

__all__ = ["Reaper"]

log = logging.getLogger("jit.reaper")

#: Seconds between two full reads of the due shards' earliest entries (the index's safety net).
_REFRESH_EVERY = 60.0


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
        # Room for several issuers' work: a healthy issuer may queue for all of it, a
        # degraded one holds at most half of it (IssuerSlots).
        self.max_in_flight = settings.batch_size * 4
        self.slots = IssuerSlots(
            settings.concurrency,
            backlog=self.max_in_flight // 2,
            defer=settings.issuer_timeout / 2,
            window=self.max_in_flight,
        )
        self._inflight: dict[str, asyncio.Task[str | None]] = {}
        self._claims: dict[str, int] = {}  # lease id -> the due score our latest claim set
        self._wake = asyncio.Event()
        self._refreshed = 0.0  # monotonic time of the last full index refresh

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def _claim(self, limit: int) -> list[str]:
        s = self.settings
        now = self.clock.now()
        until_ms = to_ms(now + s.visibility_timeout)
        ids = await self.manager.store.claim_due(now_ms=to_ms(now), until_ms=until_ms, limit=limit)
        for lease_id in ids:
            self._claims[lease_id] = until_ms
        return ids

    async def _reap(self, lease_id: str) -> str | None:
        try:
            return await self.manager.reap(lease_id, slots=self.slots)
        except Exception as exc:  # left claimed: due again after the visibility timeout
            log.warning("reaping lease %s failed: %s", lease_id, type(exc).__name__)
            return None

    def _start(self, lease_id: str) -> None:
        if lease_id in self._inflight:
            return  # claimed again while this replica still works on it
        task = asyncio.create_task(self._reap(lease_id), name=f"jit-reap-{lease_id[:16]}")
        self._inflight[lease_id] = task

        def done(_: asyncio.Task[str | None]) -> None:
            self._inflight.pop(lease_id, None)
            self._claims.pop(lease_id, None)
            self._wake.set()

        task.add_done_callback(done)

    async def run_once(self) -> int:
        """One round: claim what is due now and process all of it. Returns how many were
        claimed. (Tests and tools; :meth:`run` does not wait for a round to finish.)"""
        ids = await self._claim(self.settings.batch_size)
        for lease_id in ids:
            self._start(lease_id)
        waiting = [self._inflight[i] for i in ids if i in self._inflight]
        if waiting:
            await asyncio.gather(*waiting)
        return len(ids)

    async def run(self, stop: asyncio.Event) -> None:
        """Reap until ``stop`` is set. Redis outages are logged and waited out."""
        s = self.settings
        poll = s.poll_interval.total_seconds()
        try:
            while not stop.is_set():
                wait = poll
                try:
                    if self.clock.monotonic() - self._refreshed > _REFRESH_EVERY:
                        # The safety net for a writer that died between a shard and the index.
                        await self.manager.store.refresh_index()
                        self._refreshed = self.clock.monotonic()
                    room = min(s.batch_size, self.max_in_flight - len(self._inflight))
                    ids = await self._claim(room) if room > 0 else []
                    for lease_id in ids:
                        self._start(lease_id)
                    if room > 0 and len(ids) >= room:
                        await asyncio.sleep(0)  # more may be due: claim again at once
                        continue
                    nxt = await self.manager.store.next_due_ms()
                    if nxt is not None:
                        wait = min(poll, max(0.0, (nxt - to_ms(self.clock.now())) / 1000))
                except (RedisError, RedisClusterException, OSError) as exc:
                    log.warning("reaper: Redis unavailable (%s); retrying", type(exc).__name__)
                    wait = max(poll, 1.0)
                self._wake.clear()
                await _first(stop, self._wake, wait if room > 0 else poll)
        finally:
            await self._drain()

    async def _drain(self) -> None:
        """Give back at once the claims not yet worked on (queued for a slot), let the
        revocations in flight finish (each is bounded by issuer_timeout), then cancel what is
        left and give it back too. Runs to the end even if the drain itself is cancelled."""
        if not self._inflight:
            return
        try:
            await self._give_back([i for i, t in self._inflight.items() if self.slots.queued(t)])
            tasks = list(self._inflight.values())
            if tasks:
                await asyncio.wait(tasks, timeout=self.settings.issuer_timeout.total_seconds() + 1)
        finally:
            await self._give_back(list(self._inflight))

    async def _give_back(self, lease_ids: list[str]) -> None:
        """Cancel these leases' tasks and release their claims (LeaseStore.release)."""
        claims = {i: self._claims[i] for i in lease_ids if i in self._claims}
        tasks = [self._inflight[i] for i in lease_ids if i in self._inflight]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not claims:
            return
        try:
            released = await self.manager.store.release(
                claims, to_ms(self.clock.now()), me=self.manager.replica_id
            )
        # they fall due after the visibility timeout
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("reaper: could not release %d claims (%s)", len(claims), type(exc).__name__)
            return
        log.info("reaper: released %d of %d claims to the other replicas", released, len(claims))


async def _first(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Wait until ``stop`` or ``wake`` is set, or ``seconds`` pass."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()

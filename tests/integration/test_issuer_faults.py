"""One backend that is down, refusing or frozen degrades only its own issuer (issue 9, faults
7-9): other issuers keep minting and their revocations keep their pace; when the backend
answers again, what waits for it is retried at once; a revocation that keeps failing is
flagged overdue after a bounded time, not only after N attempts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import pytest
import redis.asyncio as aioredis

from broker.audit import AuditLog, MemorySink
from broker.errors import IssuerUnavailable
from broker.leases import LeaseManager, LeaseStore, Reaper
from broker.leases.health import IssuerHealth
from broker.testing import FakeClock, FakeIssuer
from broker.types import LeaseState, Scope, Task
from tests.leasekit import ALICE, SETTINGS

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FAST = msgspec.structs.replace(
    SETTINGS,
    issuer_timeout=timedelta(milliseconds=300),
    visibility_timeout=timedelta(seconds=30),
    concurrency=4,
    batch_size=20,
    poll_interval=timedelta(milliseconds=20),
    overdue_after_attempts=100,
    overdue_after=timedelta(seconds=90),
)
SLOW = Scope.of("slow", "https://demo.local", ["read"])
OTHER = Scope.of("other", "https://demo.local", ["read"])


class Env:
    def __init__(self, redis: aioredis.Redis, prefix: str, clock: FakeClock) -> None:
        self.clock = clock
        self.slow = FakeIssuer("slow", clock=clock)
        self.other = FakeIssuer("other", clock=clock)
        self.issuers = {"slow": self.slow, "other": self.other}
        self.sink = MemorySink()
        self.health = IssuerHealth(
            self.issuers,
            clock,
            interval=timedelta(seconds=60),
            retry_interval=timedelta(seconds=60),
            timeout=timedelta(milliseconds=300),
        )
        self.store = LeaseStore(redis, prefix)
        self.manager = LeaseManager(
            self.store,
            self.issuers,
            AuditLog(clock, [self.sink]),
            clock,
            FAST,
            replica_id="r1",
            health=self.health,
        )
        self.health.on_recovery = self.manager.retry_now
        self.reaper = Reaper(self.manager, FAST, clock)

    def events(self, type_: str) -> list[object]:
        return [e for e in self.sink.events if e.type == type_]


@pytest.fixture
def env(real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock) -> Env:
    return Env(real_redis, key_prefix, clock)


async def until(condition, what: str, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Liveness only (never a speed claim): wait until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


async def test_a_frozen_backend_holds_back_no_other_issuers_revocations(env: Env) -> None:
    slow = [
        (await env.manager.issue(ALICE, Task(f"s{i}"), SLOW, timedelta(seconds=60)))[0]
        for i in range(60)
    ]
    env.slow.freeze()
    env.clock.advance(61)  # every slow lease is due, and claimed first
    stop = asyncio.Event()
    runner = asyncio.create_task(env.reaper.run(stop))
    try:
        await until(lambda: len(env.slow.calls_to("revoke")) >= FAST.concurrency, "slow calls")
        # Credentials of another issuer that fall due while the slow backend hangs.
        other = [
            (await env.manager.issue(ALICE, Task(f"o{i}"), OTHER, timedelta(seconds=1)))[0]
            for i in range(30)
        ]
        env.clock.advance(2)
        await until(
            lambda: len(env.other.calls_to("revoke")) >= len(other), "the other issuer's revokes"
        )
        # ... all revoked while the slow backend is still frozen, its calls bounded by slots.
        states = {(await env.manager.get(le.id)).state for le in other}
        assert states == {LeaseState.REVOKED}
        # The frozen backend's calls time out and degrade only its own issuer.
        await until(lambda: not env.health.healthy("slow"), "the slow issuer degraded")
        assert env.health.healthy("other")
        live = [le for le in slow if (await env.manager.get(le.id)).state.live]
        assert len(live) == len(slow)
    finally:
        env.slow.thaw()
        stop.set()
        await runner


async def test_a_recovered_backend_gets_its_waiting_revocations_at_once(env: Env) -> None:
    leases = [
        (await env.manager.issue(ALICE, Task(f"t{i}"), SLOW, timedelta(seconds=60)))[0]
        for i in range(5)
    ]
    env.slow.outage = True
    env.clock.advance(61)
    for _ in range(3):  # three failed rounds: the backoff grows to seconds
        await env.reaper.run_once()
        env.clock.advance(FAST.backoff_cap)
    assert await env.reaper.run_once() == len(leases)  # the fourth failure
    assert not env.health.healthy("slow")
    due = await env.store.next_due_ms()
    assert due is not None
    assert due > int(env.clock.now().timestamp() * 1000)  # in backoff
    env.slow.outage = False
    await env.health.check("slow")  # a passing check: the backend answers again
    await until(lambda: env.health._recoveries == set(), "recovery scheduling")
    # Without advancing the clock by the backoff, everything is due now and gets revoked.
    assert await env.reaper.run_once() == len(leases)
    assert {(await env.manager.get(le.id)).state for le in leases} == {LeaseState.REVOKED}
    assert await env.store.waiting_revocations("slow") == []


async def test_a_revocation_failing_long_enough_is_overdue_before_n_attempts(env: Env) -> None:
    lease, _ = await env.manager.issue(ALICE, Task("t"), SLOW, timedelta(seconds=60))
    env.slow.outage = True
    env.clock.advance(61)
    await env.reaper.run_once()  # attempt 1, the first failure
    assert not env.events("lease.overdue")
    env.clock.advance(FAST.overdue_after)
    await env.reaper.run_once()  # attempt 2, 90 s after the first failure
    [overdue] = env.events("lease.overdue")
    assert overdue.detail["attempts"] == 2  # type: ignore[attr-defined]
    assert (await env.manager.get(lease.id)).overdue


async def test_minting_for_a_degraded_issuer_is_refused_before_anything_is_written(
    env: Env,
) -> None:
    env.slow.outage = True
    await env.health.check("slow")
    with pytest.raises(IssuerUnavailable, match="unavailable"):
        await env.manager.issue(ALICE, Task("t"), SLOW, timedelta(seconds=60))
    assert env.slow.calls_to("mint") == []
    assert await env.store.next_due_ms() is None  # no write-ahead lease either
    lease, _ = await env.manager.issue(ALICE, Task("t"), OTHER, timedelta(seconds=60))
    assert lease.state is LeaseState.ACTIVE


async def test_a_mint_that_hangs_degrades_its_issuer_until_a_check_passes(env: Env) -> None:
    env.slow.freeze()
    with pytest.raises(IssuerUnavailable, match="did not answer in time"):
        await env.manager.issue(ALICE, Task("t"), SLOW, timedelta(seconds=60))
    assert not env.health.healthy("slow")
    env.slow.thaw()
    await env.health.check("slow")
    lease, _ = await env.manager.issue(ALICE, Task("t2"), SLOW, timedelta(seconds=60))
    assert lease.state is LeaseState.ACTIVE

"""A reaper that stops (its replica drains, ADR 0051) hands its claims back: what it has not
begun is due again at once, what it had to cancel is due again with its revocation lock
dropped, so another replica revokes them without waiting for the visibility timeout — and
nothing is revoked twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import msgspec
import pytest
import redis.asyncio as aioredis

from broker.clock import to_ms
from broker.leases import LeaseManager, Reaper
from broker.testing import FakeClock
from broker.types import Lease, LeaseState
from tests.leasekit import SETTINGS, Kit, make_kit

pytestmark = pytest.mark.integration

QUICK = msgspec.structs.replace(
    SETTINGS,
    concurrency=2,
    batch_size=20,
    poll_interval=timedelta(milliseconds=20),
    issuer_timeout=timedelta(seconds=1),
)


@pytest.fixture
async def kit(real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock) -> Kit:
    return make_kit(real_redis, key_prefix, clock)


def reaper(kit: Kit, name: str) -> Reaper:
    manager = LeaseManager(
        kit.store, {"fake": kit.issuer}, kit.manager.audit, kit.clock, QUICK, replica_id=name
    )
    return Reaper(manager, QUICK, kit.clock)


async def until(condition, what: str, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Liveness only (never a speed claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.01)


async def due_leases(kit: Kit, n: int, ttl: float = 60) -> list[Lease]:
    leases = [(await kit.issue(f"t{i}", ttl=ttl))[0] for i in range(n)]
    kit.clock.advance(ttl + 1)
    return leases


async def test_claims_not_begun_are_due_again_at_once_and_revoked_once_elsewhere(
    kit: Kit,
) -> None:
    leases = await due_leases(kit, 6)
    a = reaper(kit, "replica-a")
    kit.issuer.freeze()  # two revocations hang in their slots, four queue behind them
    stop = asyncio.Event()
    runner = asyncio.create_task(a.run(stop))
    await until(lambda: a.in_flight == 6 and len(kit.issuer.calls_to("revoke")) == 2, "claims")
    stop.set()
    # The four queued claims are given back before the two in flight time out.
    b = reaper(kit, "replica-b")
    await until(lambda: len(a._claims) <= 2, "the queued claims given back")
    taken = await b._claim(20)
    assert len(taken) == 4  # due now (the clock has not moved), not in 30 s
    kit.issuer.thaw()
    await runner
    for lease_id in taken:
        b._start(lease_id)
    await asyncio.gather(*list(b._inflight.values()))
    revokes = Counter(c.lease_id for c in kit.issuer.calls_to("revoke"))
    assert set(revokes.values()) == {1}
    assert {(await kit.manager.get(i)).state for i in taken} == {LeaseState.REVOKED}
    assert len({le.id for le in leases} - set(taken)) == 2


async def test_revocations_cancelled_mid_drain_are_given_back_with_their_locks(
    kit: Kit,
) -> None:
    leases = await due_leases(kit, 2)
    a = reaper(kit, "replica-a")
    kit.issuer.freeze()
    stop = asyncio.Event()
    runner = asyncio.create_task(a.run(stop))
    await until(lambda: len(kit.issuer.calls_to("revoke")) == 2, "both revocations begun")
    held = await kit.store.load(leases[0].id)
    assert held is not None
    assert held.locker == "replica-a"
    stop.set()
    await asyncio.sleep(0.1)  # the drain waits for the two revocations in flight ...
    runner.cancel()  # ... and is cut short, as the supervisor's stop timeout would
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert a.in_flight == 0
    for le in leases:
        rec = await kit.store.load(le.id)
        assert rec is not None
        assert rec.lease.state is LeaseState.REVOKING
        assert rec.locker is None  # the lock is dropped: nobody waits for it to expire
    kit.issuer.thaw()
    b = reaper(kit, "replica-b")
    assert await b.run_once() == 2  # due now, without advancing the clock
    assert {(await kit.manager.get(le.id)).state for le in leases} == {LeaseState.REVOKED}


async def test_release_leaves_a_lease_whose_due_entry_moved_and_another_replicas_lock(
    kit: Kit,
) -> None:
    first, second = (await kit.issue("r1", ttl=60))[0], (await kit.issue("r2", ttl=60))[0]
    kit.clock.advance(61)
    now = to_ms(kit.clock.now())
    claimed = await kit.store.claim_due(now_ms=now, until_ms=now + 30_000, limit=10)
    assert sorted(claimed) == sorted([first.id, second.id])
    # the second was rescheduled meanwhile (its score is no longer our claim's)
    await kit.store.schedule(second.id, now + 5_000)
    status, _ = await kit.store.begin_revoke(
        first.id, me="replica-b", now_ms=now, lock_until_ms=now + 30_000, trigger="ttl"
    )
    assert status == "ok"
    released = await kit.store.release(
        {first.id: now + 30_000, second.id: now + 30_000}, now, me="replica-a"
    )
    assert released == 1
    shard = kit.store.keys.due_shard(kit.store.keys.shard_of(first.id))
    assert await kit.redis.zscore(shard, first.id) == now
    shard2 = kit.store.keys.due_shard(kit.store.keys.shard_of(second.id))
    assert await kit.redis.zscore(shard2, second.id) == now + 5_000
    rec = await kit.store.load(first.id)
    assert rec is not None
    assert rec.locker == "replica-b"
    assert await kit.store.next_due_ms() == now

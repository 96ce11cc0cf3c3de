"""Leases on the real Redis: leaderless reapers never revoke twice, crashed replicas and
crashed mints are recovered, and start-up work does not grow with the number of live leases."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from broker.cli.server import dev_policy_dir
from broker.clock import to_ms
from broker.config import ApprovalSettings, IssuerInstanceSettings, PersonSettings, Settings
from broker.identity import DevIdentityIssuer
from broker.leases import LeaseManager, LeaseStore, Reaper
from broker.leases.keys import new_lease_id, task_key
from broker.service import build_broker
from broker.state.connect import redis_client
from broker.state.scripts import run
from broker.testing import FakeClock
from broker.types import Credential, Lease, LeaseState, MintRequest, Task
from issuers.jwt.keys import generate_key
from tests.auditkeys import audit_settings
from tests.conftest import REDIS_URL
from tests.leasekit import ALICE, SCOPE, SETTINGS, Kit, make_kit

pytestmark = pytest.mark.integration


@pytest.fixture
async def kit(real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock) -> Kit:
    return make_kit(real_redis, key_prefix, clock)


async def test_two_reapers_over_1000_due_leases_revoke_each_exactly_once(
    kit: Kit, key_prefix: str
) -> None:
    leases = [
        (await kit.manager.issue(ALICE, Task(f"t{i % 50}"), SCOPE, timedelta(seconds=60)))[0]
        for i in range(1000)
    ]
    kit.clock.advance(61)
    other = redis_client(REDIS_URL)
    try:
        reapers = [kit.reaper, _replica(kit, LeaseStore(other, key_prefix), "replica-b")]
        claimed = Counter[str]()

        async def drain(name: str, reaper: Reaper) -> None:
            while (n := await reaper.run_once()) > 0:
                claimed[name] += n

        await asyncio.gather(*(drain(str(i), r) for i, r in enumerate(reapers)))
    finally:
        await other.aclose()
    revokes = Counter(c.lease_id for c in kit.issuer.calls_to("revoke"))
    assert set(revokes) == {le.id for le in leases}
    assert set(revokes.values()) == {1}  # each exactly once, across both replicas
    assert sum(claimed.values()) == 1000
    # Both replicas took part (a Counter has no entry for a replica that claimed nothing, so
    # ask for each by name).
    assert [claimed[str(i)] > 0 for i in range(len(reapers))] == [True, True], claimed
    assert kit.issuer.live() == []
    assert await kit.due() == {}
    states = {(await kit.manager.get(le.id)).state for le in leases}
    assert states == {LeaseState.REVOKED}


def _replica(kit: Kit, store: LeaseStore, name: str) -> Reaper:
    manager = LeaseManager(
        store, {"fake": kit.issuer}, kit.manager.audit, kit.clock, SETTINGS, replica_id=name
    )
    return Reaper(manager, SETTINGS, kit.clock)


async def test_a_replica_that_dies_mid_claim_leaves_the_lease_for_another(kit: Kit) -> None:
    lease, cred = await kit.issue(ttl=5)
    kit.clock.advance(5)
    now_ms = to_ms(kit.clock.now())
    vt_ms = int(SETTINGS.visibility_timeout.total_seconds() * 1000)
    # Replica A claims the lease and takes its revocation lock, then dies.
    assert await kit.store.claim_due(now_ms=now_ms, until_ms=now_ms + vt_ms, limit=10) == [lease.id]
    status, _ = await kit.store.begin_revoke(
        lease.id, me="replica-a", now_ms=now_ms, lock_until_ms=now_ms + vt_ms, trigger="ttl"
    )
    assert status == "ok"
    b = kit.replica("replica-b")
    assert await b.run_once() == 0
    backend = kit.issuer.find(cred.secret)
    assert backend is not None
    assert backend.revoked_at is None
    kit.clock.advance(SETTINGS.visibility_timeout)
    assert await b.run_once() == 1
    assert backend.revoked_at is not None
    got = await kit.manager.get(lease.id)
    assert got.state is LeaseState.REVOKED
    assert got.revoke_trigger == "ttl"
    assert len(kit.issuer.calls_to("revoke")) == 1


async def test_a_crash_between_minting_and_active_is_cleaned_up(kit: Kit) -> None:
    """The process dies after the issuer created the credential and before the lease became
    active: another replica revokes it by its lease-id-derived name after mint_grace."""
    gate = asyncio.Event()
    original = kit.issuer.mint

    async def dies_after_creating(request: MintRequest) -> Credential:
        await original(request)
        await gate.wait()
        raise AssertionError("unreachable")

    kit.issuer.mint = dies_after_creating  # type: ignore[method-assign]
    issuing = asyncio.create_task(kit.issue(ttl=3600))
    while not kit.issuer.credentials:
        await asyncio.sleep(0.001)
    issuing.cancel()  # the process is gone
    with pytest.raises(asyncio.CancelledError):
        await issuing
    [cred] = kit.issuer.credentials.values()
    b = kit.replica("replica-b")
    kit.clock.advance(SETTINGS.mint_grace - timedelta(seconds=1))
    assert await b.run_once() == 0
    kit.clock.advance(timedelta(seconds=1))
    assert await b.run_once() == 1
    assert cred.revoked_at is not None
    lease = await kit.manager.get(cred.lease_id)
    assert lease.state is LeaseState.REVOKED
    assert lease.revoke_trigger == "mint_timeout"


# -- start-up cost -------------------------------------------------------------------------


class CountingConnection(Connection):
    """Counts every command this client writes to the socket (single commands, redis-py
    pipelines and the broker's own batches all go through ``send_packed_command``)."""

    sent: ClassVar[Counter[str]] = Counter()

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        reader = hiredis.Reader()
        reader.feed(b"".join([command] if isinstance(command, bytes) else command))
        while (request := reader.gets()) is not False:
            CountingConnection.sent[request[0].decode().upper()] += 1
        await super().send_packed_command(command, check_health)


async def _fill(redis: aioredis.Redis, prefix: str, n: int, clock: FakeClock) -> None:
    """Write ``n`` live leases the way LeaseStore.create does, in large pipelines."""
    store = LeaseStore(redis, prefix)
    now = clock.now()
    not_after = now + timedelta(hours=1)
    day_ms = 24 * 3600 * 1000
    for start in range(0, n, 2000):
        ops = []
        for i in range(start, min(n, start + 2000)):
            task = f"task-{i // 4}"
            lease = Lease(
                id=new_lease_id(task_key(ALICE.id, task)),
                task_id=task,
                owner=ALICE.id,
                principal=ALICE,
                scope=SCOPE,
                issued_at=now,
                not_after=not_after,
                state=LeaseState.MINTING,
            )
            ops += [
                *store.due_ops(lease.id, to_ms(not_after)),
                store.create_op(
                    lease, deadline_ms=to_ms(not_after), bounded=False, retention_ms=day_ms
                ),
                *store.owner_ops(lease),
            ]
        await run(redis, ops)


async def _start_and_stop(prefix: str, clock: FakeClock, keys: Path) -> Counter[str]:
    CountingConnection.sent = Counter()
    client = aioredis.Redis.from_url(REDIS_URL, connection_class=CountingConnection)
    settings = Settings(
        key_prefix=prefix,
        policy_dir=str(dev_policy_dir()),
        issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(keys)})},
        approvals=ApprovalSettings(people={"ops": PersonSettings()}, default_approvers=["ops"]),
        audit=audit_settings(keys / "audit"),
    )
    broker = await build_broker(
        settings,
        clock=clock,
        redis=client,
        dev_identity=DevIdentityIssuer("http://127.0.0.1:8200/dev/oidc", clock),
    )
    await broker.reaper.run_once()  # the first reaper round: nothing is due yet
    await broker.aclose()
    return CountingConnection.sent


@pytest.fixture
async def big_prefix(key_prefix: str) -> AsyncIterator[str]:
    yield f"{key_prefix}-big"
    client = aioredis.Redis.from_url(REDIS_URL)
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{key_prefix}-big:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)
    await client.aclose()


async def test_start_up_sends_the_same_commands_with_100k_live_leases_as_with_none(
    real_redis: aioredis.Redis,
    key_prefix: str,
    big_prefix: str,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    generate_key(tmp_path, "EdDSA", clock.now())
    empty = await _start_and_stop(key_prefix, clock, tmp_path)
    await _fill(real_redis, big_prefix, 100_000, clock)
    assert await LeaseStore(real_redis, big_prefix).live_count() == 100_000
    full = await _start_and_stop(big_prefix, clock, tmp_path)
    assert full == empty
    assert sum(full.values()) < 20, full

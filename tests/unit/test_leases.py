"""The lease manager and reaper on fakeredis with a FakeIssuer and a FakeClock: write-ahead
issuance, every revocation trigger, retries that never give up, ownership, crash recovery."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from broker.clock import to_ms
from broker.errors import Conflict, InvalidRequest, IssuerError, IssuerUnavailable, NotFound
from broker.leases import Reaper
from broker.state.scripts import run
from broker.testing import FakeClock
from broker.types import Credential, LeaseState, MintRequest, Secret, Task
from tests.leasekit import ALICE, BOB, SCOPE, SETTINGS, Kit, make_kit


@pytest.fixture
async def kit(fake_redis: aioredis.Redis, clock: FakeClock) -> Kit:
    return make_kit(fake_redis, "jit", clock)


async def test_issue_writes_an_active_lease_with_the_handle_and_a_due_entry(kit: Kit) -> None:
    lease, cred = await kit.issue(ttl=120)
    assert lease.state is LeaseState.ACTIVE
    assert lease.handle == {"name": f"fake_{lease.id}"}
    stored = await kit.manager.get(lease.id)
    # The store keeps the principal's id, not its claims (they served the decision and mint).
    assert stored.principal.id == lease.principal.id
    assert stored.principal.claims == {}
    assert stored == msgspec.structs.replace(lease, principal=stored.principal)
    assert (await kit.due())[lease.id] == lease.not_after.timestamp() * 1000
    assert kit.issuer.is_valid(cred.secret)
    [minted] = kit.events("lease.minted")
    assert minted.lease_id == lease.id
    assert minted.detail["ttl_seconds"] == 120
    assert cred.metadata == {"name": f"fake_{lease.id}"}
    assert minted.detail["metadata.name"] == f"fake_{lease.id}"


async def test_the_lease_exists_in_state_minting_before_the_issuer_is_called(kit: Kit) -> None:
    seen: list[tuple[LeaseState, float | None]] = []
    original = kit.issuer.mint

    async def spying_mint(request: MintRequest) -> Credential:
        rec = await kit.store.load(request.lease_id)
        assert rec is not None
        seen.append((rec.lease.state, (await kit.due()).get(request.lease_id)))
        return await original(request)

    kit.issuer.mint = spying_mint  # type: ignore[method-assign]
    lease, _ = await kit.issue(ttl=600)
    grace_ms = (lease.issued_at + SETTINGS.mint_grace).timestamp() * 1000
    assert seen == [(LeaseState.MINTING, grace_ms)]


async def test_no_secret_is_written_to_redis(kit: Kit) -> None:
    _, cred = await kit.issue()
    secret = cred.secret.reveal().encode()
    for key in await kit.redis.keys("*"):
        dump = repr(await kit.redis.dump(key))
        assert secret not in (await kit.redis.dump(key) or b""), key
        assert cred.secret.reveal() not in dump


async def test_a_failed_mint_removes_what_the_issuer_created_and_marks_the_lease_failed(
    kit: Kit,
) -> None:
    kit.issuer.fail_next_mint(after_create=True)
    with pytest.raises(IssuerUnavailable):
        await kit.issue()
    [cred] = kit.issuer.credentials.values()
    assert cred.revoked_at is not None  # revoked by its lease-id-derived name
    lease = await kit.manager.get(cred.lease_id)
    assert lease.state is LeaseState.FAILED
    assert kit.events("lease.mint_failed")
    assert cred.lease_id not in await kit.due()


async def test_a_mint_that_does_not_answer_times_out_and_is_cleaned_up(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hang(request: MintRequest) -> Credential:
        await asyncio.sleep(3600)
        raise AssertionError

    kit.issuer.mint = hang  # type: ignore[method-assign]
    kit.manager.settings = msgspec.structs.replace(
        SETTINGS, issuer_timeout=timedelta(milliseconds=50)
    )
    with pytest.raises(IssuerUnavailable, match="did not answer in time"):
        await kit.issue()
    assert kit.issuer.calls_to("revoke")
    [failed] = kit.events("lease.mint_failed")
    assert failed.reasons == ["timeout"]


async def test_an_issuer_breaking_the_contract_is_refused_and_revoked(kit: Kit) -> None:
    async def too_long(request: MintRequest) -> Credential:
        return Credential(
            secret=Secret("s3cr3t-value"),
            expires_at=request.not_after + timedelta(hours=1),
            handle={"name": f"fake_{request.lease_id}"},
        )

    kit.issuer.mint = too_long  # type: ignore[method-assign]
    with pytest.raises(IssuerError, match="outlives its lease"):
        await kit.issue()
    assert len(kit.issuer.calls_to("revoke")) == 1


async def test_the_broker_dying_mid_mint_leaves_nothing_alive(kit: Kit) -> None:
    """The request is cancelled after the issuer created the credential but before the lease
    was activated (the process died): the reaper revokes it after mint_grace, by name."""
    release, created = asyncio.Event(), asyncio.Event()
    original = kit.issuer.mint

    async def slow(request: MintRequest) -> Credential:
        cred = await original(request)  # the backend has it now
        created.set()
        await release.wait()
        return cred

    kit.issuer.mint = slow  # type: ignore[method-assign]
    task = asyncio.create_task(kit.issue(ttl=3600))
    await created.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [cred] = kit.issuer.credentials.values()
    assert (await kit.manager.get(cred.lease_id)).state is LeaseState.MINTING
    assert await kit.reaper.run_once() == 0  # not before the grace period
    kit.clock.advance(SETTINGS.mint_grace)
    assert await kit.reaper.run_once() == 1
    assert cred.revoked_at is not None
    lease = await kit.manager.get(cred.lease_id)
    assert lease.state is LeaseState.REVOKED
    assert lease.revoke_trigger == "mint_timeout"
    assert await kit.due() == {}


async def test_completing_the_task_during_a_mint_revokes_the_credential_it_returns(
    kit: Kit,
) -> None:
    release, minting = asyncio.Event(), asyncio.Event()
    original = kit.issuer.mint

    async def slow(request: MintRequest) -> Credential:
        minting.set()  # the lease is written (state minting) before the issuer is called
        await release.wait()
        return await original(request)

    kit.issuer.mint = slow  # type: ignore[method-assign]
    issuing = asyncio.create_task(kit.issue("t1"))
    await minting.wait()
    view = await kit.manager.complete_task(ALICE.id, "t1")
    assert view.state == "completed"
    release.set()
    with pytest.raises(Conflict, match="was completed while the credential was minted"):
        await issuing
    [cred] = kit.issuer.credentials.values()
    assert cred.revoked_at is not None
    assert (await kit.manager.get(cred.lease_id)).state is LeaseState.REVOKED
    assert kit.issuer.live() == []


async def test_the_reaper_revokes_at_the_ttl_and_records_the_lag(kit: Kit) -> None:
    lease, cred = await kit.issue(ttl=60)
    kit.clock.advance(59)
    assert await kit.reaper.run_once() == 0
    kit.clock.advance(1.25)
    assert await kit.reaper.run_once() == 1
    assert not kit.issuer.is_valid(cred.secret)
    got = await kit.manager.get(lease.id)
    assert got.state is LeaseState.REVOKED
    assert got.revoke_trigger == "ttl"
    assert got.revoked_at == lease.not_after + timedelta(seconds=0.25)
    [event] = kit.events("lease.revoked")
    assert event.detail == {"trigger": "ttl", "attempts": 1, "lag_ms": 250}
    assert await kit.due() == {}


async def test_explicit_revoke_is_idempotent_and_owner_only(kit: Kit) -> None:
    lease, cred = await kit.issue()
    with pytest.raises(NotFound):
        await kit.manager.revoke(lease.id, "explicit", owner=BOB.id)
    assert kit.issuer.is_valid(cred.secret)
    first = await kit.manager.revoke(lease.id, "explicit", owner=ALICE.id)
    second = await kit.manager.revoke(lease.id, "explicit", owner=ALICE.id)
    assert first.state is second.state is LeaseState.REVOKED
    assert first.revoked_at == second.revoked_at
    assert len(kit.issuer.calls_to("revoke")) == 1
    assert not kit.issuer.is_valid(cred.secret)


@pytest.mark.parametrize("bad", ["", "nope", "0" * 16, "../x", "g" * 16 + "." + "0" * 32])
async def test_a_malformed_lease_id_is_not_found(kit: Kit, bad: str) -> None:
    with pytest.raises(NotFound):
        await kit.manager.get(bad)


async def test_revocation_failures_retry_with_backoff_forever_and_flag_overdue(kit: Kit) -> None:
    lease, cred = await kit.issue(ttl=10)
    kit.issuer.fail_next_revoke(5)
    got = await kit.manager.revoke(lease.id, "explicit")
    assert got.state is LeaseState.REVOKING
    assert got.attempts == 1
    assert got.last_error == "IssuerUnavailable: fake issuer: scripted revoke failure"
    for _ in range(4):  # the reaper keeps trying after each backoff
        kit.clock.advance(SETTINGS.backoff_cap)
        assert await kit.reaper.run_once() == 1
    got = await kit.manager.get(lease.id)
    assert got.attempts == 5
    assert got.overdue
    assert got.revoke_trigger == "explicit"
    assert [le.id for le in await kit.manager.overdue()] == [lease.id]
    assert len(kit.events("lease.overdue")) == 1  # raised once, not per attempt
    assert len(kit.events("lease.revoke_failed")) == 5
    assert kit.issuer.is_valid(cred.secret) or kit.clock.now() >= lease.not_after
    kit.clock.advance(SETTINGS.backoff_cap)
    assert await kit.reaper.run_once() == 1
    got = await kit.manager.get(lease.id)
    assert got.state is LeaseState.REVOKED
    assert await kit.manager.overdue() == []
    assert await kit.due() == {}


async def test_a_backoff_is_respected(kit: Kit) -> None:
    lease, _ = await kit.issue()
    kit.issuer.fail_next_revoke()
    await kit.manager.revoke(lease.id, "explicit")
    retry_at = (await kit.due())[lease.id] / 1000
    delay = retry_at - kit.clock.now().timestamp()
    assert 0.5 <= delay <= 1.0  # first step of base 1s with equal jitter
    assert await kit.reaper.run_once() == 0


async def test_an_issuer_removed_from_config_keeps_its_leases_due(kit: Kit) -> None:
    lease, _ = await kit.issue()
    kit.manager.issuers = {}
    got = await kit.manager.revoke(lease.id, "explicit")
    assert got.state is LeaseState.REVOKING
    assert got.last_error == "IssuerError: issuer 'fake' is not configured"
    assert lease.id in await kit.due()


async def test_completing_a_task_revokes_all_its_leases_and_closes_it(kit: Kit) -> None:
    a, _ = await kit.issue("t1")
    b, _ = await kit.issue("t1")
    _, other_cred = await kit.issue("t2")
    view = await kit.manager.complete_task(ALICE.id, "t1")
    assert view.state == "completed"
    assert view.completed_at == kit.clock.now()
    assert {le.id: le.state for le in view.leases} == {
        a.id: LeaseState.REVOKED,
        b.id: LeaseState.REVOKED,
    }
    assert {le.revoke_trigger for le in view.leases} == {"task_completed"}
    assert kit.issuer.is_valid(other_cred.secret)
    with pytest.raises(Conflict, match="task 't1' is completed"):
        await kit.issue("t1")
    again = await kit.manager.complete_task(ALICE.id, "t1")  # idempotent
    assert again.completed_at == view.completed_at
    assert len(kit.issuer.calls_to("revoke")) == 2


async def test_tasks_belong_to_their_owner(kit: Kit) -> None:
    mine, _ = await kit.issue("shared-name", who=ALICE)
    with pytest.raises(NotFound):
        await kit.manager.complete_task(BOB.id, "shared-name")
    with pytest.raises(NotFound):
        await kit.manager.get_task(BOB.id, "shared-name")
    theirs, _ = await kit.issue("shared-name", who=BOB)  # a different task of the same name
    await kit.manager.complete_task(BOB.id, "shared-name")
    assert (await kit.manager.get(mine.id)).state is LeaseState.ACTIVE
    assert (await kit.manager.get(theirs.id)).state is LeaseState.REVOKED


async def test_unknown_task_and_bad_task_ids(kit: Kit) -> None:
    with pytest.raises(NotFound):
        await kit.manager.complete_task(ALICE.id, "never-started")
    for bad in ["", "has space", "x" * 129, "tab\t"]:
        with pytest.raises(InvalidRequest):
            await kit.manager.issue(ALICE, Task(bad), SCOPE, timedelta(minutes=1))


async def test_listing_shows_live_leases_and_on_request_the_finished_ones(kit: Kit) -> None:
    a, _ = await kit.issue("t1")
    kit.clock.advance(1)
    b, _ = await kit.issue("t2")
    await kit.issue("t3", who=BOB)
    await kit.manager.revoke(a.id, "explicit")
    assert [le.id for le in await kit.manager.list(ALICE.id)] == [b.id]
    every = await kit.manager.list(ALICE.id, include_inactive=True)
    assert [le.id for le in every] == [b.id, a.id]


async def test_revoking_a_workload_revokes_only_its_live_leases(kit: Kit) -> None:
    for t in ("t1", "t2", "t3"):
        await kit.issue(t)
    _, bob_cred = await kit.issue("t1", who=BOB)
    assert await kit.manager.revoke_workload(ALICE.id) == 3
    assert await kit.manager.list(ALICE.id) == []
    assert kit.issuer.is_valid(bob_cred.secret)
    assert await kit.manager.revoke_workload(ALICE.id) == 0


async def test_a_replica_that_dies_holding_a_claim_leaves_the_lease_to_another(kit: Kit) -> None:
    lease, cred = await kit.issue(ttl=5)
    kit.clock.advance(5)
    # Replica A claims and dies before revoking.
    now_ms = int(kit.clock.now().timestamp() * 1000)
    claimed = await kit.store.claim_due(now_ms=now_ms, until_ms=now_ms + 30_000, limit=10)
    assert claimed == [lease.id]
    b = kit.replica("replica-b")
    assert await b.run_once() == 0  # invisible while A's claim holds
    backend = kit.issuer.find(cred.secret)
    assert backend is not None
    assert backend.revoked_at is None
    kit.clock.advance(SETTINGS.visibility_timeout)
    assert await b.run_once() == 1
    assert backend.revoked_at is not None
    assert (await kit.manager.get(lease.id)).state is LeaseState.REVOKED


async def test_a_revocation_lock_left_by_a_dead_replica_expires(kit: Kit) -> None:
    lease, _ = await kit.issue(ttl=5)
    now_ms = int(kit.clock.now().timestamp() * 1000)
    status, _ = await kit.store.begin_revoke(
        lease.id, me="dead", now_ms=now_ms, lock_until_ms=now_ms + 30_000, trigger="explicit"
    )
    assert status == "ok"
    got = await kit.manager.revoke(lease.id, "explicit")
    assert got.state is LeaseState.REVOKING  # busy: the other replica holds it
    assert kit.issuer.calls_to("revoke") == []
    kit.clock.advance(SETTINGS.visibility_timeout)
    await kit.reaper.run_once()
    assert (await kit.manager.get(lease.id)).state is LeaseState.REVOKED


async def test_revoked_records_expire_after_the_retention_window(kit: Kit) -> None:
    lease, _ = await kit.issue()
    await kit.manager.revoke(lease.id, "explicit")
    # The task (holding the lease's record) expires `retention` after its last live lease.
    ttl_ms = await kit.redis.pttl(kit.store.keys.lease_task(lease.id))
    assert 0 < ttl_ms <= SETTINGS.retention.total_seconds() * 1000
    live = await kit.manager.get(lease.id)
    assert live.state is LeaseState.REVOKED


async def test_a_live_lease_record_never_expires(kit: Kit) -> None:
    lease, _ = await kit.issue()
    assert await kit.redis.pttl(kit.store.keys.lease_task(lease.id)) == -1


# -- task deadlines and expiry-only issuers -----------------------------------------------------


async def test_a_task_deadline_is_set_by_its_first_request_and_then_enforced(kit: Kit) -> None:
    deadline = await kit.manager.task_deadline(
        ALICE.id, Task("t1", ttl=timedelta(minutes=30)), default=timedelta(hours=12)
    )
    assert deadline == kit.clock.now() + timedelta(minutes=30)
    await kit.manager.issue(ALICE, Task("t1"), SCOPE, timedelta(minutes=5), deadline=deadline)
    # Later requests cannot move it.
    again = await kit.manager.task_deadline(
        ALICE.id, Task("t1", ttl=timedelta(hours=5)), default=timedelta(hours=12)
    )
    assert again == deadline
    view = await kit.manager.get_task(ALICE.id, "t1")
    assert view.deadline == deadline
    kit.clock.advance(timedelta(minutes=30))
    with pytest.raises(Conflict, match="reached its deadline"):
        await kit.manager.task_deadline(ALICE.id, Task("t1"), default=timedelta(hours=12))
    with pytest.raises(Conflict, match="reached its deadline"):
        await kit.issue("t1", ttl=60)


async def test_an_expiry_only_credential_may_not_outlive_its_task(kit: Kit) -> None:
    from broker.issuer import Capabilities

    kit.issuer.capabilities = Capabilities(
        max_ttl=timedelta(hours=1), default_ttl=timedelta(minutes=15), revocable=False
    )
    deadline = kit.clock.now() + timedelta(minutes=10)
    with pytest.raises(Conflict, match="reached its deadline"):
        await kit.manager.issue(ALICE, Task("t1"), SCOPE, timedelta(minutes=20), deadline=deadline)
    lease, _ = await kit.manager.issue(
        ALICE, Task("t1"), SCOPE, timedelta(minutes=10), deadline=deadline
    )
    assert lease.not_after == deadline


# -- a state change whose audit record was lost -------------------------------------------


async def test_a_mint_whose_record_was_lost_gets_it_written_when_the_lease_is_next_touched(
    kit: Kit,
) -> None:
    """The process died after activating the lease and before its lease.minted record was
    appended: the marker left on the lease makes the reaper write it (marked recovered)."""
    lease, _ = await kit.issue(ttl=60)
    # Put the marker back as a crash between the activation and its record would leave it.
    committed_ms = int(kit.clock.now().timestamp() * 1000)
    await kit.redis.hset(kit.store.keys.lease_task(lease.id), lease.id[-8:] + "q", committed_ms)
    kit.sink.events.clear()
    kit.clock.advance(61)
    assert await kit.reaper.run_once() == 1
    types = [(e.type, e.detail.get("recovered")) for e in kit.sink.events]
    assert types[0] == ("lease.minted", True)
    assert ("lease.revoked", None) in types
    rec = await kit.store.load(lease.id)
    assert rec is not None
    assert rec.minted_pending_ms is None


async def test_a_revocation_whose_record_was_lost_is_recorded_by_the_reaper(kit: Kit) -> None:
    """The process died after the lease was marked revoked and before lease.revoked was
    appended and its indexes settled: the due entry is still there, so the reaper finds it."""
    lease, _ = await kit.issue(ttl=3600)
    status, rev = await kit.store.begin_revoke(
        lease.id, me="r1", now_ms=0, lock_until_ms=2**40, trigger="explicit"
    )
    assert status == "ok"
    await run(
        kit.redis,
        [
            kit.store.finish_op(
                lease.id, me="r1", rev=rev, now_ms=1, final=LeaseState.REVOKED, retention_ms=1000
            )
        ],
    )
    await kit.issuer.revoke(await kit.manager.get(lease.id))
    kit.sink.events.clear()
    await kit.store.schedule(lease.id, 0)  # the claim's visibility timeout has passed
    assert await kit.reaper.run_once() == 1
    [recovered] = [e for e in kit.sink.events if e.type == "lease.revoked"]
    assert recovered.detail["recovered"] is True
    assert await kit.due() == {}


# -- what the reaper does with each kind of lease it claims ------------------------------------


async def test_the_reaper_drops_a_due_entry_whose_lease_record_is_gone(kit: Kit) -> None:
    lease, _ = await kit.issue(ttl=5)
    await kit.redis.delete(kit.store.keys.lease_task(lease.id))
    kit.clock.advance(5)
    assert await kit.manager.reap(lease.id) == "gone"
    assert await kit.due() == {}
    assert kit.issuer.calls_to("revoke") == []


async def test_the_reaper_drops_a_due_entry_of_a_lease_already_revoked(kit: Kit) -> None:
    lease, _ = await kit.issue(ttl=5)
    await kit.manager.revoke(lease.id, "explicit")
    await kit.store.schedule(lease.id, to_ms(kit.clock.now()))  # a stale entry
    assert await kit.manager.reap(lease.id) == "done"
    assert await kit.due() == {}
    assert len(kit.issuer.calls_to("revoke")) == 1


async def test_the_reaper_puts_back_an_active_lease_claimed_before_its_ttl(kit: Kit) -> None:
    lease, cred = await kit.issue(ttl=600)
    await kit.store.schedule(lease.id, to_ms(kit.clock.now()))  # due too early
    assert await kit.manager.reap(lease.id) == "rescheduled"
    assert (await kit.due())[lease.id] == to_ms(lease.not_after)
    assert kit.issuer.is_valid(cred.secret)


async def test_the_reaper_leaves_a_minting_lease_alone_until_its_grace_ends(kit: Kit) -> None:
    release, created = asyncio.Event(), asyncio.Event()
    original = kit.issuer.mint

    async def slow(request: MintRequest) -> Credential:
        cred = await original(request)
        created.set()
        await release.wait()
        return cred

    kit.issuer.mint = slow  # type: ignore[method-assign]
    task = asyncio.create_task(kit.issue(ttl=3600))
    await created.wait()
    [cred] = kit.issuer.credentials.values()
    await kit.store.schedule(cred.lease_id, to_ms(kit.clock.now()))
    assert await kit.manager.reap(cred.lease_id) == "rescheduled"
    grace_end = kit.clock.now() + SETTINGS.mint_grace
    assert (await kit.due())[cred.lease_id] == to_ms(grace_end)
    assert cred.revoked_at is None
    release.set()
    await task


async def test_the_reaper_leaves_a_lease_another_replica_is_revoking_until_its_lock_ends(
    kit: Kit,
) -> None:
    lease, _ = await kit.issue(ttl=5)
    kit.clock.advance(5)
    now_ms = to_ms(kit.clock.now())
    lock_until = now_ms + 30_000
    status, _ = await kit.store.begin_revoke(
        lease.id, me="replica-a", now_ms=now_ms, lock_until_ms=lock_until, trigger="ttl"
    )
    assert status == "ok"
    assert await kit.manager.reap(lease.id) == "busy"
    assert (await kit.due())[lease.id] == lock_until
    assert kit.issuer.calls_to("revoke") == []
    assert (await kit.manager.get(lease.id)).state is LeaseState.REVOKING


async def test_a_replica_whose_revocation_lock_was_taken_over_does_not_finish_the_revocation(
    kit: Kit,
) -> None:
    """Replica A's issuer call outlives its lock; B takes the lease over and revokes it. A's
    late success must not overwrite B's record or audit a second revocation."""
    lease, cred = await kit.issue(ttl=5)
    kit.clock.advance(5)
    entered, release = asyncio.Event(), asyncio.Event()
    original = kit.issuer.revoke
    calls = 0

    async def first_call_hangs(le: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await release.wait()
        await original(le)

    kit.issuer.revoke = first_call_hangs  # type: ignore[method-assign]
    a = asyncio.create_task(kit.manager.reap(lease.id))
    await entered.wait()
    kit.clock.advance(SETTINGS.visibility_timeout)  # A's lock has run out
    b = kit.replica("replica-b")
    assert await b.manager.reap(lease.id) == "revoked"
    release.set()
    assert await a == "busy"
    got = await kit.manager.get(lease.id)
    assert got.state is LeaseState.REVOKED
    assert not kit.issuer.is_valid(cred.secret)
    assert len(kit.events("lease.revoked")) == 1


async def test_an_issuer_that_puts_the_secret_in_the_handle_is_refused_and_revoked(
    kit: Kit,
) -> None:
    async def leaky(request: MintRequest) -> Credential:
        return Credential(
            secret=Secret("s3cr3t-in-the-handle"),
            expires_at=request.not_after,
            handle={"name": f"fake_{request.lease_id}", "note": "s3cr3t-in-the-handle"},
        )

    kit.issuer.mint = leaky  # type: ignore[method-assign]
    with pytest.raises(IssuerError, match="put the secret in the credential's handle"):
        await kit.issue()
    assert len(kit.issuer.calls_to("revoke")) == 1


async def test_a_lease_id_of_another_task_is_refused(kit: Kit) -> None:
    other = kit.manager.plan_lease_id(ALICE.id, "another-task")
    with pytest.raises(InvalidRequest, match="does not belong to this task"):
        await kit.manager.issue(ALICE, Task("t1"), SCOPE, timedelta(seconds=60), lease_id=other)
    mine = kit.manager.plan_lease_id(ALICE.id, "t1")
    lease, _ = await kit.manager.issue(
        ALICE, Task("t1"), SCOPE, timedelta(seconds=60), lease_id=mine
    )
    assert lease.id == mine


async def test_listing_skips_a_record_that_expired_and_shows_the_rest(kit: Kit) -> None:
    older, _ = await kit.issue("t1")
    kit.clock.advance(1)
    newer, _ = await kit.issue("t2")
    await kit.redis.delete(kit.store.keys.lease_task(newer.id))  # listed first (newest first)
    assert [le.id for le in await kit.manager.list(ALICE.id)] == [older.id]


async def test_a_record_still_within_its_grace_is_not_taken_for_lost(kit: Kit) -> None:
    """A marker younger than the grace belongs to a commit whose clearing is on its way: the
    reaper looks again later instead of writing a second record."""
    lease, _ = await kit.issue(ttl=3600)
    committed_ms = int(kit.clock.now().timestamp() * 1000)
    await kit.redis.hset(kit.store.keys.lease_task(lease.id), lease.id[-8:] + "q", committed_ms)
    kit.sink.events.clear()
    await kit.store.schedule(lease.id, 0)
    assert await kit.reaper.run_once() == 1  # "rescheduled": the lease is active
    assert [e for e in kit.sink.events if e.type == "lease.minted"] == []
    grace_ms = SETTINGS.visibility_timeout.total_seconds() * 1000
    assert (await kit.due())[lease.id] == committed_ms + grace_ms


@pytest.mark.parametrize(
    "error",
    [RedisConnectionError("Redis went away"), RedisClusterException("no master for slot 42")],
    ids=["RedisError", "RedisClusterException"],
)
async def test_the_reaper_loop_waits_out_a_store_error_and_reaps_after_it(
    kit: Kit, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster without a master for a slot raises RedisClusterException, which is not a
    RedisError: the loop must wait it out as it does a Redis outage, not die."""
    lease, _ = await kit.issue(ttl=60)
    kit.clock.advance(timedelta(seconds=61))
    real_claim = kit.store.claim_due
    failures = 1  # the loop waits a second after an error

    async def flaky_claim(**kwargs: Any) -> list[str]:
        nonlocal failures
        if failures:
            failures -= 1
            raise error
        return await real_claim(**kwargs)

    monkeypatch.setattr(kit.store, "claim_due", flaky_claim)
    settings = msgspec.structs.replace(SETTINGS, poll_interval=timedelta(milliseconds=1))
    reaper = Reaper(kit.manager, settings, kit.clock)
    stop = asyncio.Event()
    runner = asyncio.create_task(reaper.run(stop))
    for _ in range(500):  # a deadline, not a timing: the loop retries after 1 s
        if (await kit.manager.get(lease.id)).state is LeaseState.REVOKED:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert failures == 0
    assert (await kit.manager.get(lease.id)).state is LeaseState.REVOKED

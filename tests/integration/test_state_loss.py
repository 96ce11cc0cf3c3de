"""When Redis loses the broker's state (issue 9, fault 12): a replica notices (the epoch),
refuses to serve until an operator accepts, and reconciliation revokes every backend
credential that no live lease owns — never one a live or minting lease owns."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from broker.audit import AuditLog, MemorySink
from broker.leases import LeaseManager, LeaseStore
from broker.service.reconcile import Reconciler
from broker.service.stateguard import accept_epoch
from broker.testing import FakeClock, FakeIssuer
from broker.types import LeaseState, Task
from tests.integration.conftest import Api, request_body
from tests.leasekit import ALICE, SCOPE, SETTINGS

pytestmark = [pytest.mark.integration, pytest.mark.faults]


async def test_a_lost_epoch_stops_the_replica_until_an_operator_accepts(api: Api) -> None:
    headers = api.auth("alice")
    assert (await api.client.get("/v1/leases", headers=headers)).status_code == 200
    prefix = api.broker.settings.key_prefix
    keys = [k async for k in api.redis.scan_iter(match=f"{prefix}:*")]
    await api.redis.delete(*keys)  # what a failover to an empty replica looks like
    assert await api.broker.guard.check() is False
    refused = await api.client.get("/v1/leases", headers=headers)
    assert refused.status_code == 503
    assert refused.json()["type"].endswith("state-lost")
    assert "jit state accept" in refused.json()["detail"]
    assert refused.headers["retry-after"]
    mint = await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    assert mint.status_code == 503
    # Under /oauth/ the refusal is in the RFC 6749 shape, like every answer there.
    for path in ("/oauth/token", "/oauth/introspect", "/oauth/revoke"):
        oauth = await api.client.post(path, data={"token": "x"}, headers=headers)
        assert oauth.status_code == 503, path
        assert oauth.headers["content-type"].startswith("application/json"), path
        assert oauth.headers["retry-after"]
        assert oauth.headers["cache-control"] == "no-store"
        body = oauth.json()
        assert body["error"] == "temporarily_unavailable", body
        assert "jit state accept" in body["error_description"]
        assert "type" not in body
    ready = await api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["state"].startswith("lost")
    assert (await api.client.get("/healthz")).status_code == 200
    assert [e.type for e in api.audit.events if e.type == "state.lost"] == ["state.lost"]
    # A replica keeps refusing until the new epoch is marked accepted.
    await api.redis.hset(f"{prefix}:{{epoch}}", mapping={"id": "someone-elses"})
    assert await api.broker.guard.check() is False
    await accept_epoch(api.redis, prefix, api.clock)
    assert await api.broker.guard.check() is True
    assert (await api.client.get("/v1/leases", headers=headers)).status_code == 200
    assert (await api.client.get("/readyz")).status_code == 200


class Env:
    def __init__(self, redis: aioredis.Redis, prefix: str, clock: FakeClock) -> None:
        self.redis = redis
        self.prefix = prefix
        self.issuer = FakeIssuer("fake", clock=clock)
        self.sink = MemorySink()
        audit = AuditLog(clock, [self.sink])
        self.store = LeaseStore(redis, prefix)
        self.manager = LeaseManager(self.store, {"fake": self.issuer}, audit, clock, SETTINGS)
        self.reconciler = Reconciler(
            {"fake": self.issuer}, self.manager, audit, clock, redis, prefix
        )

    async def forget(self, lease_id: str) -> None:
        """Lose one lease's task record, as a Redis that lost its data would."""
        await self.redis.delete(self.store.keys.lease_task(lease_id))


@pytest.fixture
def env(real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock) -> Env:
    return Env(real_redis, key_prefix, clock)


async def test_reconcile_revokes_what_no_live_lease_owns_and_nothing_else(env: Env) -> None:
    kept, kept_cred = await env.manager.issue(ALICE, Task("a"), SCOPE, timedelta(minutes=5))
    lost, lost_cred = await env.manager.issue(ALICE, Task("b"), SCOPE, timedelta(minutes=5))
    done, _ = await env.manager.issue(ALICE, Task("c"), SCOPE, timedelta(minutes=5))
    await env.manager.revoke(done.id, "explicit")
    await env.forget(lost.id)
    dry = await env.reconciler.reconcile(dry_run=True)
    assert dry.orphans == {"fake": [lost.id]}
    assert env.issuer.is_valid(lost_cred.secret)  # a dry run changes nothing
    report = await env.reconciler.reconcile()
    assert report.orphans == {"fake": [lost.id]}
    assert report.revoked == {"fake": 1}
    assert report.clean
    assert not env.issuer.is_valid(lost_cred.secret)
    assert env.issuer.is_valid(kept_cred.secret)
    assert (await env.manager.get(kept.id)).state is LeaseState.ACTIVE
    [event] = [e for e in env.sink.events if e.type == "reconcile.revoked"]
    assert event.lease_id == lost.id
    assert (await env.reconciler.reconcile()).orphans == {"fake": []}


async def test_a_mint_in_flight_is_never_an_orphan(env: Env) -> None:
    # The write-ahead lease exists before the backend creates anything.
    env.issuer.fail_next_mint(after_create=True)
    env.issuer.fail_next_revoke()  # its clean-up fails too: the lease stays live (revoking)
    with pytest.raises(Exception, match="scripted"):
        await env.manager.issue(ALICE, Task("t"), SCOPE, timedelta(minutes=5))
    [cred] = env.issuer.credentials.values()
    assert (await env.manager.get(cred.lease_id)).state is LeaseState.REVOKING
    report = await env.reconciler.reconcile()
    assert report.orphans == {"fake": []}


async def test_a_backend_that_cannot_be_listed_is_reported_not_guessed(env: Env) -> None:
    env.issuer.outage = True
    report = await env.reconciler.reconcile()
    assert "fake" in report.errors
    assert not report.clean

"""The Redis client's limits through the API: a Cluster's per-node pools cannot wait for a
free connection, so a burst beyond ``max_connections`` is a 503 with Retry-After (never a
500); ``wait_replicas`` on Sentinel: a write-ahead that not enough replicas acknowledged is a
503 before the issuer is asked, and the lease stays for revoke-on-doubt."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import SlotNotCoveredError

from broker.config import RedisSettings
from broker.state.scripts import ReplicaWait
from tests.integration.conftest import Api, request_body
from tests.redisfarm import Farm

pytestmark = pytest.mark.integration


@pytest.fixture
def test_redis(request: pytest.FixtureRequest, redis_farm: Farm) -> RedisSettings:
    mode, over = request.param
    return redis_farm.settings(mode, **over)


@pytest.mark.parametrize("test_redis", [("cluster", {"max_connections": 1})], indirect=True)
async def test_a_burst_beyond_a_cluster_nodes_connections_is_a_503_never_a_500(
    api: Api,
) -> None:
    headers = api.auth("alice")
    first = await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    assert first.status_code == 201, first.text
    lease = first.json()["lease_id"]

    async def one(i: int) -> tuple[int, str | None]:
        if i % 4:
            r = await api.client.get(f"/v1/leases/{lease}", headers=headers)
        else:
            # Idempotency keys are read and written outside the group commit: one
            # connection each, at once.
            body = request_body(task={"id": f"burst-{i}", "purpose": "deploy"})
            keyed = {**headers, "Idempotency-Key": f"burst-key-{i:04d}-0123456789abcdef"}
            r = await api.client.post("/v1/credentials", json=body, headers=keyed)
        return r.status_code, r.headers.get("retry-after")

    answers = await asyncio.gather(*(one(i) for i in range(200)))
    statuses = {status for status, _ in answers}
    assert statuses <= {200, 201, 503}, answers
    assert 503 in statuses, answers  # one connection per node: the burst did not fit
    assert all(after for status, after in answers if status == 503)


@pytest.mark.parametrize(
    "test_redis",
    [("sentinel", {"wait_replicas": 1, "wait_timeout": timedelta(seconds=2)})],
    indirect=True,
)
async def test_with_the_replica_acknowledging_mints_succeed(api: Api) -> None:
    headers = api.auth("alice")
    for i in range(5):
        body = request_body(task={"id": f"w-{i}", "purpose": "deploy"})
        r = await api.client.post("/v1/credentials", json=body, headers=headers)
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "test_redis",
    [("sentinel", {"wait_replicas": 1, "wait_timeout": timedelta(milliseconds=20)})],
    indirect=True,
)
async def test_a_write_ahead_too_few_replicas_acknowledged_is_a_503_and_stays_for_the_reaper(
    api: Api,
) -> None:
    chain = api.broker.audit.chain
    assert chain is not None
    assert chain.wait == ReplicaWait(1, 20)  # from redis.wait_replicas / wait_timeout
    chain.wait = ReplicaWait(2, 20)  # the farm's master has one replica: WAIT answers 1
    headers = api.auth("alice")
    r = await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"]
    assert "1 of 2 replicas acknowledged" in r.json()["detail"]
    minted = [e for e in api.audit.events if e.type == "lease.minted"]
    assert minted == []  # the issuer was never asked
    # The write-ahead lease is in Redis (minting), on the due index at the mint grace: the
    # reaper revokes whatever the issuer might have made.
    chain.wait = None
    [lease] = (await api.client.get("/v1/leases", headers=headers)).json()
    assert lease["state"] == "minting"
    api.clock.advance(api.broker.settings.reaper.mint_grace + timedelta(seconds=1))
    assert await api.broker.reaper.run_once() == 1
    after = await api.client.get(f"/v1/leases/{lease['id']}", headers=headers)
    assert after.json()["state"] == "revoked"


@pytest.mark.parametrize("test_redis", [("cluster", {})], indirect=True)
async def test_a_cluster_without_a_slot_master_is_a_503_and_not_ready(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = api.auth("alice")
    minted = await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    assert minted.status_code == 201, minted.text

    async def uncovered(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise SlotNotCoveredError("slot 866 is not covered by the cluster")

    # What redis-py raises while a failed master's slots have no master yet: not a RedisError.
    monkeypatch.setattr(RedisCluster, "execute_command", uncovered)
    monkeypatch.setattr(ClusterPipeline, "execute", uncovered)
    r = await api.client.get(f"/v1/leases/{minted.json()['lease_id']}", headers=headers)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"]
    token = minted.json()["credential"]["secret"]
    oauth = await api.client.post("/oauth/introspect", data={"token": token}, headers=headers)
    assert oauth.status_code == 503, oauth.text
    assert oauth.json()["error"] == "temporarily_unavailable"
    assert (await api.client.get("/readyz")).status_code == 503
    monkeypatch.undo()

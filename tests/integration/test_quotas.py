"""Quotas (issue 13 part 4): live leases and mints per minute, per workload and per policy
owner, enforced atomically in Redis; a refusal is a 429 with Retry-After naming the quota,
audited and counted, and it writes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.config import QuotaLimit, QuotaSettings
from tests.integration.conftest import Api, request_body

pytestmark = pytest.mark.integration


@pytest.fixture
def settings_over() -> dict[str, Any]:
    return {
        "quotas": QuotaSettings(
            workload=QuotaLimit(live_leases=3, mints_per_minute=5),
            owner=QuotaLimit(live_leases=4),
            owners={"dev": QuotaLimit(live_leases=4, mints_per_minute=100)},
        )
    }


async def mint(api: Api, sub: str, task: str) -> Any:
    body = request_body(task={"id": task})
    return await api.client.post("/v1/credentials", json=body, headers=api.auth(sub))


async def test_a_workload_past_its_live_lease_quota_gets_a_429_naming_it(api: Api) -> None:
    for i in range(3):
        assert (await mint(api, "alice", f"t{i}")).status_code == 201
    before = [k async for k in api.redis.scan_iter(match=f"{api.broker.settings.key_prefix}:{{t:*")]
    r = await mint(api, "alice", "t3")
    assert r.status_code == 429, r.text
    assert r.json()["type"].endswith("quota-exceeded")
    assert r.json()["quota"] == "workload.live_leases"
    assert int(r.headers["retry-after"]) > 0
    after = [k async for k in api.redis.scan_iter(match=f"{api.broker.settings.key_prefix}:{{t:*")]
    # The refused task's hash may exist for a moment but holds no lease.
    leases = await api.client.get("/v1/leases", headers=api.auth("alice"))
    assert len(leases.json()) == 3
    assert len(after) <= len(before) + 1
    [refused] = [e for e in api.audit.events if e.type == "quota.refused"]
    assert refused.detail["quota"] == "workload.live_leases"
    # A revoked lease frees its place.
    lease_id = leases.json()[0]["id"]
    await api.client.delete(f"/v1/leases/{lease_id}", headers=api.auth("alice"))
    assert (await mint(api, "alice", "t4")).status_code == 201


async def test_a_policy_owner_quota_spans_its_workloads(api: Api) -> None:
    assert (await mint(api, "alice", "a1")).status_code == 201
    assert (await mint(api, "alice", "a2")).status_code == 201
    assert (await mint(api, "bob", "b1")).status_code == 201
    assert (await mint(api, "bob", "b2")).status_code == 201
    r = await mint(api, "carol", "c1")
    assert r.status_code == 429
    assert r.json()["quota"] == "owner.live_leases"


async def test_mints_per_minute_refuse_with_the_seconds_to_the_next_minute(api: Api) -> None:
    for i in range(3):
        assert (await mint(api, "dave", f"t{i}")).status_code == 201
        lease = (await api.client.get("/v1/leases", headers=api.auth("dave"))).json()[0]["id"]
        await api.client.delete(f"/v1/leases/{lease}", headers=api.auth("dave"))
    for i in range(3, 5):
        assert (await mint(api, "dave", f"t{i}")).status_code == 201
        lease = (await api.client.get("/v1/leases", headers=api.auth("dave"))).json()[0]["id"]
        await api.client.delete(f"/v1/leases/{lease}", headers=api.auth("dave"))
    r = await mint(api, "dave", "t5")
    assert r.status_code == 429
    assert r.json()["quota"] == "workload.mints_per_minute"
    assert 0 < int(r.headers["retry-after"]) <= 60


async def test_concurrent_requests_never_exceed_the_quota(api: Api) -> None:
    answers = await asyncio.gather(*(mint(api, "erin", f"t{i}") for i in range(10)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 3
    assert codes.count(429) == 7
    leases = await api.client.get("/v1/leases", headers=api.auth("erin"))
    assert len(leases.json()) == 3


async def test_token_exchange_answers_a_quota_with_slow_down(api: Api) -> None:
    for i in range(3):
        assert (await mint(api, "frank", f"t{i}")).status_code == 201
    r = await api.client.post(
        "/oauth/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": api.dev.issue("frank", {}),
            "resource": "https://demo.local",
            "scope": "read",
        },
    )
    assert r.status_code == 429
    assert r.json()["error"] == "slow_down"
    assert r.json()["quota"] == "workload.live_leases"
    assert r.headers["retry-after"]

"""Idempotency-Key on POST /v1/credentials: a retried request gets the same lease and
credential, concurrent duplicates make one lease, a different body under the same key is a 422,
and the stored response is sealed (the suite's secret scan checks Redis for the secret)."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import Api, request_body

pytestmark = pytest.mark.integration


async def post(api: Api, key: str | None, sub: str = "alice", **over: object):  # type: ignore[no-untyped-def]
    headers = api.auth(sub)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await api.client.post("/v1/credentials", json=request_body(**over), headers=headers)


async def task_leases(api: Api, task: str = "build-1", sub: str = "alice") -> list[str]:
    r = await api.client.get(f"/v1/tasks/{task}", headers=api.auth(sub))
    return [le["id"] for le in r.json()["leases"]]


async def test_a_retry_with_the_same_key_gets_the_same_lease_and_credential(api: Api) -> None:
    first = await post(api, "key-1")
    again = await post(api, "key-1")
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.json() == first.json()
    assert await task_leases(api) == [first.json()["lease_id"]]
    minted = [e for e in api.audit.events if e.type == "lease.minted"]
    assert len(minted) == 1


async def test_concurrent_requests_with_one_key_make_one_lease(api: Api) -> None:
    answers = await asyncio.gather(*(post(api, "key-c") for _ in range(5)))
    assert {r.status_code for r in answers} == {201}
    assert len({r.json()["lease_id"] for r in answers}) == 1
    assert len({r.json()["credential"]["secret"] for r in answers}) == 1
    assert len(await task_leases(api)) == 1


async def test_a_different_request_under_the_same_key_is_a_422(api: Api) -> None:
    assert (await post(api, "key-2")).status_code == 201
    r = await post(api, "key-2", actions=["write"])
    assert r.status_code == 422
    assert r.json()["type"].endswith("idempotency-key-reused")
    assert len(await task_leases(api)) == 1


async def test_keys_are_per_caller_and_per_task(api: Api) -> None:
    a = await post(api, "shared", sub="alice")
    b = await post(api, "shared", sub="bob")
    c = await post(api, "shared", sub="alice", task={"id": "build-2"})
    assert len({r.json()["lease_id"] for r in (a, b, c)}) == 3


async def test_a_request_without_a_task_retries_into_the_same_task(api: Api) -> None:
    body = request_body()
    del body["task"]
    headers = {**api.auth(), "Idempotency-Key": "no-task"}
    first = await api.client.post("/v1/credentials", json=body, headers=headers)
    again = await api.client.post("/v1/credentials", json=body, headers=headers)
    assert first.json()["lease_id"] == again.json()["lease_id"]
    assert first.json()["task_id"] == again.json()["task_id"]


async def test_a_refused_request_is_not_remembered(api: Api) -> None:
    denied = await post(api, "key-3", resource="https://prod.local")
    assert denied.status_code == 403
    # The same key and body are refused again by the policy, not replayed from a record.
    assert (await post(api, "key-3", resource="https://prod.local")).status_code == 403
    assert [e for e in api.audit.events if e.type == "decision" and e.outcome == "deny"][1]


async def test_a_replay_after_revocation_is_refused(api: Api) -> None:
    first = await post(api, "key-4")
    lease_id = first.json()["lease_id"]
    gone = await api.client.delete(f"/v1/leases/{lease_id}", headers=api.auth("alice"))
    assert gone.json()["state"] == "revoked"
    r = await post(api, "key-4")
    assert r.status_code == 409
    assert "revoked" in r.json()["detail"]


@pytest.mark.parametrize("key", ["", "x" * 201, "with space", "tab\there"])
async def test_a_malformed_key_is_a_400(api: Api, key: str) -> None:
    r = await post(api, key)
    assert r.status_code == 400
    assert "Idempotency-Key" in r.json()["detail"]
    assert await api.lease_keys() == []


async def test_redis_holds_the_response_only_sealed(api: Api) -> None:
    r = await post(api, "key-5")
    secret = r.json()["credential"]["secret"].encode()
    prefix = api.broker.settings.key_prefix
    keys = [k async for k in api.redis.scan_iter(match=f"{prefix}:*:idem:*")]
    assert len(keys) == 1
    stored = await api.redis.hgetall(keys[0])
    assert secret not in b"".join(k + v for k, v in stored.items())
    assert b"key-5" not in keys[0]

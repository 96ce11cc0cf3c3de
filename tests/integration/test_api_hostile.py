"""Hostile input against the HTTP API, as classes (issue 9): no 5xx and no traceback for any
malformed value, no answer that tells a caller about another workload's credentials, nothing
cacheable that carries a credential, and 503 (never 500) while the state store is down."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    CLIENT_SECRET,
    JWT_TYPE,
    TOKEN_EXCHANGE,
    Api,
    request_body,
)

pytestmark = pytest.mark.integration

NESTED = b"[" * 5000 + b"]" * 5000


async def mint(api: Api, sub: str = "alice", **over: object) -> dict[str, Any]:
    r = await api.client.post("/v1/credentials", json=request_body(**over), headers=api.auth(sub))
    assert r.status_code == 201, r.text
    return dict(r.json())


# -- deeply nested JSON ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/credentials"),
        ("POST", "/v1/usage"),
        ("POST", "/v1/approvals/" + "0" * 32 + "/approve"),
        ("POST", "/v1/approvals/" + "0" * 32 + "/deny"),
    ],
)
async def test_deeply_nested_json_is_a_400_without_a_traceback(
    api: Api, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await api.client.request(
        method,
        path,
        content=NESTED,
        headers={**api.auth(), "content-type": "application/json"},
    )
    assert r.status_code in (400, 401, 403), r.text
    assert r.status_code != 500
    assert "nested too deeply" in r.text or r.status_code in (401, 403)
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
    assert await api.lease_keys() == []


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "over",
    [
        pytest.param({"ttl": "99999999999d"}, id="a huge duration string"),
        pytest.param({"ttl": 10**30}, id="a huge number"),
        pytest.param({"ttl": "١٢٠"}, id="non-ASCII digits"),
        pytest.param({"ttl": "²"}, id="a superscript digit"),
        pytest.param({"task": {"id": "t-1", "ttl": "99999999999d"}}, id="a huge task ttl"),
        pytest.param({"task": {"id": "t-\u0661"}}, id="a non-ASCII task id"),
    ],
)
async def test_a_hostile_duration_is_a_400_naming_the_field(api: Api, over: dict[str, Any]) -> None:
    r = await api.client.post("/v1/credentials", json=request_body(**over), headers=api.auth())
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await api.lease_keys() == []


def exchange_form(subject: str, **over: str) -> dict[str, str]:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token_type": JWT_TYPE,
        "subject_token": subject,
        "resource": "https://demo.local",
        "scope": "read",
    }
    form.update(over)
    return form


@pytest.mark.parametrize("ttl", ["²", "١٢٠", "99999999999999", "-5", "1.5", "10m"])
async def test_token_exchange_refuses_a_hostile_ttl_in_the_oauth_shape(api: Api, ttl: str) -> None:
    token = api.dev.issue("alice", {})
    r = await api.client.post("/oauth/token", data=exchange_form(token, ttl=ttl))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request"
    assert "ttl" in r.json()["error_description"]
    assert await api.lease_keys() == []


async def test_token_exchange_authenticates_before_it_reads_the_intent(api: Api) -> None:
    # A forged subject token with a broken intent: the answer is about the token, nothing else.
    r = await api.client.post(
        "/oauth/token", data=exchange_form("not.a.jwt", ttl="²", task_id="a b")
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    assert "error_description" in r.json()
    assert r.headers["cache-control"] == "no-store"


# -- caching ----------------------------------------------------------------------------------


async def test_no_answer_that_carries_a_credential_may_be_cached(api: Api) -> None:
    r = await api.client.post("/v1/credentials", json=request_body(), headers=api.auth())
    assert r.status_code == 201
    assert r.headers["cache-control"] == "no-store"
    lease = await api.client.get("/v1/leases", headers=api.auth())
    assert lease.headers["cache-control"] == "no-store"
    # Public documents keep their own, public caching.
    jwks = await api.client.get("/.well-known/jwks.json")
    assert jwks.headers["cache-control"].startswith("public")


async def test_an_approval_collect_that_carries_the_credential_is_not_cacheable(api: Api) -> None:
    body = request_body(actions=["admin"], task={"id": "hotfix-1"})
    r = await api.client.post("/v1/credentials", json=body, headers=api.auth())
    assert r.status_code == 202, r.text
    approval_id = r.json()["approval_id"]
    view = await api.broker.approvals.review(approval_id, person="dev-approver", decision="approve")
    assert view.state.value == "approved"
    got = await api.client.get(f"/v1/approvals/{approval_id}", headers=api.auth())
    assert got.status_code == 200
    assert got.json()["credential"] is not None
    assert got.headers["cache-control"] == "no-store"


# -- usage reports -----------------------------------------------------------------------------


async def test_a_usage_report_by_lease_id_cannot_touch_another_workloads_lease(api: Api) -> None:
    victim = await mint(api, "alice")
    # Bob may introspect (the dev policy lets every workload), but he is not the resource
    # server of Alice's credential and does not hold it.
    report = {"lease_id": victim["lease_id"], "resource": "https://evil.example"}
    r = await api.client.post("/v1/usage", json=report, headers=api.auth("bob"))
    unknown = await api.client.post(
        "/v1/usage",
        json={"lease_id": "0" * 16 + "." + "0" * 8, "resource": "https://evil.example"},
        headers=api.auth("bob"),
    )
    assert r.status_code == unknown.status_code == 404
    assert r.json()["detail"] == unknown.json()["detail"]
    lease = await api.client.get(f"/v1/leases/{victim['lease_id']}", headers=api.auth("alice"))
    assert lease.json()["state"] == "active"
    assert not [e for e in api.audit.events if e.type in ("anomaly.detected", "lease.used")]


async def test_a_usage_report_counts_for_the_credential_the_reporter_presents(api: Api) -> None:
    cred = await mint(api, "alice")
    r = await api.client.post(
        "/v1/usage",
        json={"token": cred["credential"]["secret"], "resource": "https://demo.local"},
        headers=api.auth("orders-api-workload"),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"lease_id": cred["lease_id"], "active": True, "violations": []}


async def test_a_client_reports_by_lease_id_only_for_the_resources_it_serves(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred = await mint(api, "alice")
    clients = api.broker.callers.clients
    basic = httpx.BasicAuth("orders-api", CLIENT_SECRET)
    report = {"lease_id": cred["lease_id"], "action": "read"}
    reporter = replace(clients["orders-api"], permissions=frozenset({"report"}))
    monkeypatch.setitem(clients, "orders-api", reporter)
    r = await api.client.post("/v1/usage", json=report, auth=basic)
    assert r.status_code == 404  # it serves nothing yet
    serving = replace(reporter, resources=frozenset({"https://demo.local"}))
    monkeypatch.setitem(clients, "orders-api", serving)
    r = await api.client.post("/v1/usage", json=report, auth=basic)
    assert r.status_code == 200, r.text
    assert r.json()["active"] is True


# -- identity ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sub",
    ["   ", " alice", "alice\n", "ali\x00ce", "ali\u200bce", "a\u2028b", "x" * 513],
)
async def test_a_subject_that_cannot_be_shown_safely_is_refused(api: Api, sub: str) -> None:
    r = await api.client.get("/v1/leases", headers=api.auth(sub))
    assert r.status_code == 401
    assert "invalid sub claim" in r.json()["detail"]


async def test_the_jwt_issuer_refuses_an_unknown_param(api: Api) -> None:
    r = await api.client.post(
        "/v1/credentials", json=request_body(params={"audience": "x"}), headers=api.auth()
    )
    assert r.status_code == 400, r.text
    assert "takes no params" in r.json()["detail"]


# -- the state store down ----------------------------------------------------------------------


def redis_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on no Redis connection can be had (commands, pipelines and scripts alike)."""
    from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(ConnectionPool, "get_connection", refuse)
    monkeypatch.setattr(BlockingConnectionPool, "get_connection", refuse)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/leases"),
        ("GET", "/v1/leases/{lease}"),
        ("DELETE", "/v1/leases/{lease}"),
        ("POST", "/v1/tasks/build-1/complete"),
        ("GET", "/v1/tasks/build-1"),
        ("POST", "/v1/leases/revoke-all"),
    ],
)
async def test_routes_answer_503_with_retry_after_while_redis_is_down(
    api: Api, method: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred = await mint(api, "alice")
    headers = api.auth("alice")
    redis_down(monkeypatch)
    r = await api.client.request(method, path.format(lease=cred["lease_id"]), headers=headers)
    monkeypatch.undo()
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"]
    assert r.json()["type"].endswith("store-unavailable")


async def test_oauth_endpoints_answer_503_in_the_oauth_shape_while_redis_is_down(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred = await mint(api, "alice")
    redis_down(monkeypatch)
    r = await api.client.post(
        "/oauth/introspect", data={"token": cred["credential"]["secret"]}, headers=api.auth()
    )
    monkeypatch.undo()
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "temporarily_unavailable"
    assert r.headers["retry-after"]


async def test_an_unmatched_route_still_gets_a_request_id_and_no_store(api: Api) -> None:
    r = await api.client.get("/no/such/route", headers={"X-Request-ID": "trace-42"})
    assert r.status_code == 404
    assert r.headers["x-request-id"] == "trace-42"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"].startswith("application/problem+json")

"""The HTTP API in process (litestar's test client) over the real Redis: bad input gets a
clear 4xx and changes nothing; OAuth endpoints answer in the RFC shapes; no secret leaks."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta

import pytest

from tests.integration.conftest import (
    BASE,
    CLIENT_SECRET,
    JWT_TYPE,
    TOKEN_EXCHANGE,
    Api,
    request_body,
)

pytestmark = pytest.mark.integration


async def test_a_valid_request_gets_201_with_the_credential_and_its_lease(api: Api) -> None:
    r = await api.client.post("/v1/credentials", json=request_body(), headers=api.auth())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["actions"] == ["read"]
    assert body["ttl"] == 300
    assert body["grant"] == "dev/demo-rw"
    assert body["credential"]["token_type"] == "Bearer"
    lease = (await api.client.get(f"/v1/leases/{body['lease_id']}", headers=api.auth())).json()
    assert lease["state"] == "active"
    assert lease["purpose"] == "deploy"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        pytest.param(b'{"issuer": "jwt",', 400, "", id="truncated JSON is a 400"),
        pytest.param(b"[1, 2]", 400, "", id="a JSON array is a 400"),
        pytest.param(
            json.dumps(request_body(admin=True)).encode(),
            400,
            "admin",
            id="an unknown field is named",
        ),
        pytest.param(
            json.dumps(request_body(actions=[])).encode(), 400, "actions", id="no actions is a 400"
        ),
        pytest.param(
            json.dumps(request_body(ttl="forever")).encode(), 400, "ttl", id="a bad ttl is a 400"
        ),
        pytest.param(
            json.dumps(request_body(task={"id": "a b"})).encode(),
            400,
            "task",
            id="a bad task id is a 400",
        ),
        pytest.param(
            json.dumps(request_body(actions=["rm -rf"])).encode(),
            400,
            "actions",
            id="a bad action is a 400",
        ),
        pytest.param(b"x" * 70_000, 413, "", id="an oversized body is a 413"),
    ],
)
async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    api: Api, body: bytes, status: int, needle: str
) -> None:
    r = await api.client.post(
        "/v1/credentials", content=body, headers={**api.auth(), "content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == status
    assert needle in problem["detail"]
    assert problem["request_id"] == r.headers["x-request-id"]
    assert await api.lease_keys() == []


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        pytest.param({}, "missing bearer token", id="no token"),
        pytest.param(
            {"Authorization": "Basic Zm9vOmJhcg=="}, "missing bearer token", id="the wrong scheme"
        ),
        pytest.param({"Authorization": "Bearer not.a.jwt"}, "", id="garbage"),
    ],
)
async def test_an_unauthenticated_caller_gets_401(
    api: Api, headers: dict[str, str], needle: str
) -> None:
    r = await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    assert r.status_code == 401
    assert "Bearer" in r.headers["www-authenticate"]
    assert needle in r.json()["detail"]
    assert any(e.type == "auth.failed" for e in api.audit.events)
    assert await api.lease_keys() == []


async def test_an_expired_identity_token_gets_401(api: Api) -> None:
    headers = api.auth()
    api.clock.advance(timedelta(hours=2))
    r = await api.client.get("/v1/leases", headers=headers)
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        pytest.param({"issuer": "nope"}, "", id="an unknown issuer is denied"),
        pytest.param({"resource": "https://prod.local"}, "", id="another resource is denied"),
        pytest.param({"actions": ["read", "delete"]}, "delete", id="an extra action is denied"),
        pytest.param({"ttl": "2h"}, "", id="a ttl past the grant's max is denied"),
    ],
)
async def test_requests_outside_the_grant_are_denied_with_reasons(
    api: Api, over: dict[str, object], needle: str
) -> None:
    r = await api.client.post("/v1/credentials", json=request_body(**over), headers=api.auth())
    assert r.status_code == 403, r.text
    problem = r.json()
    assert problem["reasons"]
    assert needle in " ".join(problem["reasons"])
    decisions = [e for e in api.audit.events if e.type == "decision"]
    assert decisions[-1].outcome == "deny"
    assert decisions[-1].reasons == problem["reasons"]
    assert await api.lease_keys() == []


async def test_admin_needs_approval_and_the_answer_names_the_grant(api: Api) -> None:
    r = await api.client.post(
        "/v1/credentials", json=request_body(actions=["admin"]), headers=api.auth()
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "pending"
    assert body["grant"] == "dev/demo-admin"
    assert body["approvers"] == ["dev-approver"]
    assert r.headers["location"] == f"/v1/approvals/{body['approval_id']}"
    assert await api.lease_keys() == []  # nothing minted


async def test_a_completed_task_gets_no_new_credentials(api: Api) -> None:
    headers = api.auth()
    assert (
        await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    ).status_code == 201
    done = await api.client.post("/v1/tasks/build-1/complete", headers=headers)
    assert done.status_code == 200
    assert [le["state"] for le in done.json()["leases"]] == ["revoked"]
    again = await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    assert again.status_code == 409
    task = await api.client.get("/v1/tasks/build-1", headers=headers)
    assert task.json()["state"] == "completed"


def form(**over: str) -> dict[str, str]:
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token_type": JWT_TYPE,
        "resource": "https://demo.local",
        "scope": "read",
    }
    data.update(over)
    return data


@pytest.mark.parametrize(
    ("over", "error"),
    [
        pytest.param(
            {"grant_type": "client_credentials"}, "unsupported_grant_type", id="another grant type"
        ),
        pytest.param(
            {"subject_token_type": "urn:x"}, "invalid_request", id="an unknown subject token type"
        ),
        pytest.param({"resource": ""}, "invalid_target", id="no resource"),
        pytest.param({"scope": ""}, "invalid_scope", id="no scope"),
        pytest.param({"ttl": "ten"}, "invalid_request", id="a ttl that is not seconds"),
        pytest.param(
            {"authorization_details": "{"},
            "invalid_authorization_details",
            id="broken authorization_details",
        ),
        pytest.param({"scope": "delete"}, "invalid_scope", id="an action no grant allows"),
    ],
)
async def test_token_exchange_errors_use_the_oauth_shape(
    api: Api, over: dict[str, str], error: str
) -> None:
    data = form(subject_token=api.dev.issue("ci-1"), **over)
    r = await api.client.post("/oauth/token", data=data)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == error
    assert r.json()["error_description"]
    assert await api.lease_keys() == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/oauth/token", 405),
        ("POST", "/oauth/nothing-here", 404),
        ("POST", "/oauth/introspect/extra", 404),
    ],
)
async def test_every_answer_under_oauth_is_in_the_oauth_shape_an_unmatched_route_too(
    api: Api, method: str, path: str, status: int
) -> None:
    r = await api.client.request(method, path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["cache-control"] == "no-store"
    assert r.json()["error"] == "invalid_request"
    assert "type" not in r.json()
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("over", "error", "says"),
    [
        pytest.param(
            {"actor_token": "x", "actor_token_type": JWT_TYPE},
            "invalid_grant",
            "",
            id="an actor token that does not verify (delegation, docs/agents.md)",
        ),
        pytest.param(
            {"audience": "https://other.local"},
            "invalid_target",
            "resource and audience name different targets",
            id="a resource and an audience that disagree",
        ),
        pytest.param(
            {
                "authorization_details": json.dumps(
                    [{"type": "jwt", "locations": ["https://other.local"], "actions": ["read"]}]
                )
            },
            "invalid_target",
            "resource and authorization_details.locations differ",
            id="a resource that disagrees with authorization_details",
        ),
        pytest.param(
            {
                "authorization_details": json.dumps(
                    [{"type": "jwt", "locations": ["https://demo.local"], "actions": ["write"]}]
                )
            },
            "invalid_scope",
            "scope and authorization_details.actions differ",
            id="a scope that disagrees with authorization_details",
        ),
        pytest.param(
            {
                "authorization_details": json.dumps(
                    [{"type": "jwt", "locations": ["https://demo.local", "https://b.local"]}]
                )
            },
            "invalid_target",
            "one location per request",
            id="two locations",
        ),
        pytest.param(
            {"authorization_details": json.dumps([{"type": "jwt"}, {"type": "jwt"}])},
            "invalid_authorization_details",
            "exactly one entry",
            id="two authorization_details entries",
        ),
        pytest.param(
            {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
            "invalid_target",
            "requested_token_type",
            id="a token type it does not issue",
        ),
        pytest.param({"task_id": "a b"}, "invalid_request", "task_id", id="a task id with a space"),
        pytest.param(
            {"purpose": "x" * 1001}, "invalid_request", "purpose", id="a purpose over 1000"
        ),
    ],
)
async def test_token_exchange_refuses_what_it_cannot_honour(
    api: Api, over: dict[str, str], error: str, says: str
) -> None:
    data = form(subject_token=api.dev.issue("ci-1"), **over)
    r = await api.client.post("/oauth/token", data=data)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == error
    assert says in r.json()["error_description"]
    assert await api.lease_keys() == []


async def test_token_exchange_refuses_a_repeated_parameter_and_a_json_body(api: Api) -> None:
    token = api.dev.issue("ci-1")
    body = f"grant_type={TOKEN_EXCHANGE}&subject_token={token}&subject_token={token}"
    r = await api.client.post(
        "/oauth/token", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.json()["error"] == "invalid_request"
    r = await api.client.post("/oauth/token", json=form(subject_token=token))
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"


async def test_token_exchange_with_authorization_details(api: Api) -> None:
    details = [{"type": "jwt", "locations": ["https://demo.local"], "actions": ["write"]}]
    data = form(subject_token=api.dev.issue("ci-1"), authorization_details=json.dumps(details))
    del data["resource"], data["scope"]
    r = await api.client.post("/oauth/token", data=data)
    assert r.status_code == 200, r.text
    assert r.json()["authorization_details"] == details
    assert r.json()["scope"] == "write"


async def test_introspection_by_a_configured_client_and_by_a_workload(api: Api) -> None:
    r = await api.client.post(
        "/oauth/token", data=form(subject_token=api.dev.issue("ci-1"), task_id="t9")
    )
    token = r.json()["access_token"]
    basic = base64.b64encode(f"orders-api:{CLIENT_SECRET}".encode()).decode()
    res = await api.client.post(
        "/oauth/introspect", data={"token": token}, headers={"Authorization": f"Basic {basic}"}
    )
    assert res.status_code == 200
    info = res.json()
    assert info["active"] is True
    assert info["task_id"] == "t9"
    assert info["aud"] == "https://demo.local"
    assert info["sub"] == "dev:ci-1"
    post = await api.client.post(
        "/oauth/introspect",
        data={"token": token, "client_id": "orders-api", "client_secret": CLIENT_SECRET},
    )
    assert post.json()["active"] is True
    by_workload = await api.client.post(
        "/oauth/introspect", data={"token": token}, headers=api.auth("other")
    )
    assert by_workload.json()["active"] is True
    garbage = await api.client.post(
        "/oauth/introspect", data={"token": "nope"}, headers={"Authorization": f"Basic {basic}"}
    )
    assert garbage.json() == {"active": False}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no credentials"),
        pytest.param(
            {"Authorization": "Basic " + base64.b64encode(b"orders-api:wrong").decode()},
            id="a wrong secret",
        ),
        pytest.param(
            {
                "Authorization": "Basic "
                + base64.b64encode(b"nobody:" + CLIENT_SECRET.encode()).decode()
            },
            id="an unknown client",
        ),
        pytest.param({"Authorization": "Basic !!!"}, id="malformed Basic"),
    ],
)
async def test_introspection_refuses_unauthenticated_callers(
    api: Api, headers: dict[str, str]
) -> None:
    r = await api.client.post("/oauth/introspect", data={"token": "x"}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    # RFC 6749 §5.2: the challenge names the scheme the client tried
    basic = headers.get("Authorization", "").startswith("Basic ")
    challenge = 'Basic realm="jit-broker"' if basic else 'Bearer error="invalid_client"'
    assert r.headers["www-authenticate"] == challenge


async def test_introspection_by_a_client_without_the_introspect_permission_is_a_403(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await api.client.post(
        "/oauth/token", data=form(subject_token=api.dev.issue("ci-1"), task_id="t403")
    )
    token = r.json()["access_token"]
    clients = api.broker.callers.clients
    reporter = replace(clients["orders-api"], permissions=frozenset({"report"}))
    monkeypatch.setitem(clients, "orders-api", reporter)
    res = await api.client.post(
        "/oauth/introspect", data={"token": token}, auth=("orders-api", CLIENT_SECRET)
    )
    assert res.status_code == 403
    assert res.json()["error"] == "unauthorized_client"
    assert "active" not in res.json()
    assert not [e for e in api.audit.events if e.type in ("lease.introspected", "lease.used")]


async def test_revocation_endpoint_lets_the_owner_revoke_its_token(api: Api) -> None:
    identity = api.dev.issue("ci-1")
    r = await api.client.post("/oauth/token", data=form(subject_token=identity))
    token = r.json()["access_token"]
    headers = {"Authorization": f"Bearer {identity}"}
    assert (
        await api.client.post("/oauth/revoke", data={"token": token}, headers=headers)
    ).status_code == 200
    assert (
        await api.client.post("/oauth/introspect", data={"token": token}, headers=headers)
    ).json() == {"active": False}
    # Unknown tokens answer 200 too (RFC 7009 §2.2).
    assert (
        await api.client.post("/oauth/revoke", data={"token": "unknown"}, headers=headers)
    ).status_code == 200


async def test_discovery_documents_and_health(api: Api) -> None:
    meta = (await api.client.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == BASE
    assert meta["token_endpoint"] == f"{BASE}/oauth/token"
    assert meta["grant_types_supported"] == [TOKEN_EXCHANGE]
    jwks = (await api.client.get("/.well-known/jwks.json")).json()
    assert jwks["keys"]
    assert all("d" not in k for k in jwks["keys"])
    openapi = (await api.client.get("/schema/openapi.json")).json()
    assert "/v1/credentials" in openapi["paths"]
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "issuer:jwt": "ok", "state": "ok"}


async def test_no_secret_reaches_audit_or_redis(api: Api) -> None:
    identity = api.dev.issue("ci-1")
    secrets_seen = [identity]
    for i in range(3):
        r = await api.client.post(
            "/oauth/token", data=form(subject_token=identity, task_id=f"s{i}")
        )
        secrets_seen.append(r.json()["access_token"])
    await api.client.post("/v1/tasks/s0/complete", headers={"Authorization": f"Bearer {identity}"})
    audit_text = "\n".join(
        json.dumps(e.detail) + " ".join(e.reasons) + repr(e) for e in api.audit.events
    )
    dump = []
    async for key in api.redis.scan_iter(match=f"{api.broker.settings.key_prefix}:*"):
        kind = await api.redis.type(key)
        if kind == b"hash":
            dump.append(repr(await api.redis.hgetall(key)))
        elif kind == b"zset":
            dump.append(repr(await api.redis.zrange(key, 0, -1)))
        elif kind == b"set":
            dump.append(repr(await api.redis.smembers(key)))
        elif kind == b"string":
            dump.append(repr(await api.redis.get(key)))
        dump.append(repr(key))
    redis_text = "\n".join(dump)
    assert redis_text
    for s in secrets_seen:
        sig = s.rsplit(".", 1)[1]
        assert sig not in audit_text
        assert sig not in redis_text


async def test_an_expiry_only_issuer_is_capped_to_the_task_and_the_response_says_so(
    api: Api,
) -> None:
    import msgspec

    jwt_issuer = api.broker.issuers["jwt"]
    jwt_issuer.capabilities = msgspec.structs.replace(  # type: ignore[misc]
        jwt_issuer.capabilities, revocable=False
    )
    body = request_body(task={"id": "short", "ttl": "2m"}, ttl="10m")
    r = await api.client.post("/v1/credentials", json=body, headers=api.auth())
    assert r.status_code == 201, r.text
    assert r.json()["ttl"] == 120
    assert r.json()["ttl_capped_by"] == "task"
    task = (await api.client.get("/v1/tasks/short", headers=api.auth())).json()
    assert task["deadline"] == r.json()["expires_at"]
    api.clock.advance(timedelta(minutes=2))
    late = await api.client.post(
        "/v1/credentials", json=request_body(task={"id": "short"}), headers=api.auth()
    )
    assert late.status_code == 409
    assert "reached its deadline" in late.json()["detail"]


async def test_a_task_ttl_beyond_the_limit_is_a_400(api: Api) -> None:
    body = request_body(task={"id": "long", "ttl": "48h"})
    r = await api.client.post("/v1/credentials", json=body, headers=api.auth())
    assert r.status_code == 400
    assert "task ttl" in r.json()["detail"]


# -- who is calling (broker/api/auth.py) -------------------------------------------------------


async def test_a_well_formed_request_id_is_kept_and_a_malformed_one_replaced(api: Api) -> None:
    kept = await api.client.get("/healthz", headers={"X-Request-ID": "build-42.step_3"})
    assert kept.headers["x-request-id"] == "build-42.step_3"
    replaced = await api.client.get("/healthz", headers={"X-Request-ID": "bad id; drop"})
    assert replaced.headers["x-request-id"] != "bad id; drop"
    assert len(replaced.headers["x-request-id"]) == 16


async def test_the_lease_records_the_peer_address_that_asked_for_it(api: Api) -> None:
    r = await api.client.post("/v1/credentials", json=request_body(), headers=api.auth())
    assert r.status_code == 201
    lease = await api.broker.manager.get(r.json()["lease_id"])
    assert lease.origin == "127.0.0.1"


@pytest.mark.parametrize(
    ("size", "says"),
    [
        pytest.param(16 * 1024, "malformed token", id="a token of exactly 16 KiB is read"),
        pytest.param(16 * 1024 + 1, "token too large", id="one byte more is refused unread"),
    ],
)
async def test_the_bearer_token_size_limit_is_inclusive(api: Api, size: int, says: str) -> None:
    r = await api.client.get("/v1/leases", headers={"Authorization": "Bearer " + "a" * size})
    assert r.status_code == 401
    assert says in r.json()["detail"]


async def test_basic_credentials_with_characters_outside_base64_are_refused(api: Api) -> None:
    good = base64.b64encode(f"orders-api:{CLIENT_SECRET}".encode()).decode()
    ok = await api.client.post(
        "/oauth/introspect", data={"token": "x"}, headers={"Authorization": f"Basic {good}"}
    )
    assert ok.status_code == 200
    r = await api.client.post(
        "/oauth/introspect", data={"token": "x"}, headers={"Authorization": f"Basic {good}!*"}
    )
    assert r.status_code == 401
    assert r.json()["error_description"] == "malformed Basic credentials"


async def test_a_client_id_without_a_secret_in_the_form_is_not_client_authentication(
    api: Api,
) -> None:
    r = await api.client.post(
        "/oauth/introspect", data={"token": "x", "client_id": "orders-api"}, headers=api.auth()
    )
    assert r.status_code == 200, r.text  # the bearer workload token authenticates
    assert r.json() == {"active": False}

"""The quickstart, as a user runs it: jit dev, jit dev token, exchange, verify, complete."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime

import httpx
import jwt as pyjwt
import pytest

from tests.e2e.conftest import JIT, DevBroker

pytestmark = pytest.mark.e2e

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def exchange(broker: DevBroker, identity: str, **extra: str) -> httpx.Response:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": identity,
        "subject_token_type": JWT_TYPE,
        "resource": "https://demo.local",
        "scope": "read",
        **extra,
    }
    return httpx.post(f"{broker.url}/oauth/token", data=form, timeout=10)


def introspect(broker: DevBroker, caller: str, token: str) -> dict[str, object]:
    resp = httpx.post(
        f"{broker.url}/oauth/introspect",
        data={"token": token},
        headers={"Authorization": f"Bearer {caller}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def verify_with_pyjwt(broker: DevBroker, token: str, audience: str) -> dict[str, object]:
    jwks = httpx.get(f"{broker.url}/.well-known/jwks.json", timeout=10).json()
    kid = pyjwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    key = pyjwt.PyJWK.from_dict(jwk)
    claims: dict[str, object] = pyjwt.decode(
        token, key=key, algorithms=["EdDSA", "ES256"], audience=audience, issuer=broker.url
    )
    return claims


def test_the_quickstart_exchange_verify_complete_and_introspect(dev_broker: DevBroker) -> None:
    identity = dev_broker.token("ci-job-1", "repo=demo")
    resp = exchange(dev_broker, identity, task_id="build-42", ttl="600", scope="read write")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert resp.headers["cache-control"] == "no-store"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read write"
    assert 590 <= body["expires_in"] <= 600
    token = body["access_token"]

    claims = verify_with_pyjwt(dev_broker, token, "https://demo.local")
    assert claims["sub"] == "dev:ci-job-1"
    assert claims["jti"] == body["lease_id"]
    assert claims["task_id"] == "build-42"
    assert claims["authorization_details"] == [
        {"type": "jwt", "locations": ["https://demo.local"], "actions": ["read", "write"]}
    ]
    assert int(claims["exp"]) - int(claims["iat"]) == 600  # type: ignore[call-overload]

    assert introspect(dev_broker, identity, token)["active"] is True

    done = dev_broker.jit("task", "complete", "build-42", "--json", token=identity)
    task = json.loads(done.stdout)
    assert task["state"] == "completed"
    assert [le["state"] for le in task["leases"]] == ["revoked"]
    assert introspect(dev_broker, identity, token) == {"active": False}


def test_a_two_second_credential_is_revoked_by_the_reaper_without_any_client_call(
    dev_broker: DevBroker,
) -> None:
    identity = dev_broker.token("ci-job-ttl")
    resp = exchange(dev_broker, identity, ttl="2")
    assert resp.status_code == 200, resp.text
    lease_id = resp.json()["lease_id"]
    token = resp.json()["access_token"]
    assert introspect(dev_broker, identity, token)["active"] is True

    headers = {"Authorization": f"Bearer {identity}"}
    deadline = time.monotonic() + 10
    while True:  # a real e2e test: real time passes
        lease = httpx.get(f"{dev_broker.url}/v1/leases/{lease_id}", headers=headers).json()
        if lease["state"] == "revoked" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert lease["state"] == "revoked"
    assert lease["revoke_trigger"] == "ttl"
    lag = datetime.fromisoformat(lease["revoked_at"]) - datetime.fromisoformat(lease["not_after"])
    # Revoked after, never before, its not_after. How soon after is measured by
    # bench/reaper.py, not asserted here: these machines are shared and noisy.
    assert lag.total_seconds() >= 0
    assert introspect(dev_broker, identity, token) == {"active": False}


def test_the_cli_requests_lists_and_revokes_a_credential(dev_broker: DevBroker) -> None:
    identity = dev_broker.token("agent-7")
    out = dev_broker.jit(
        "request",
        "--resource",
        "https://demo.local",
        "--action",
        "read",
        "--ttl",
        "5m",
        "--task",
        "t-1",
        "--purpose",
        "read the demo",
        token=identity,
    )
    token = out.stdout.strip()
    assert token.count(".") == 2
    assert "lease " in out.stderr
    claims = verify_with_pyjwt(dev_broker, token, "https://demo.local")
    lease_id = str(claims["jti"])

    listed = json.loads(dev_broker.jit("leases", "--json", token=identity).stdout)
    assert [le["id"] for le in listed] == [lease_id]
    assert listed[0]["purpose"] == "read the demo"

    revoked = dev_broker.jit("revoke", lease_id, token=identity)
    assert "revoked" in revoked.stdout
    assert introspect(dev_broker, identity, token) == {"active": False}
    assert json.loads(dev_broker.jit("leases", "--json", token=identity).stdout) == []


def test_an_admin_request_waits_for_jit_approve_then_prints_a_credential_that_verifies(
    dev_broker: DevBroker,
) -> None:
    identity = dev_broker.token("ci-job-2")
    env = {**dev_broker.env, "JIT_TOKEN": identity}
    waiting = subprocess.Popen(
        [
            JIT,
            "request",
            "--resource",
            "https://demo.local",
            "--action",
            "admin",
            "--task",
            "hotfix-1",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        pending: list[str] = []
        while not pending and time.monotonic() < deadline:
            listed = dev_broker.jit("approvals", "list", "--json")
            pending = [a["approval_id"] for a in json.loads(listed.stdout)]
            time.sleep(0.2)
        assert len(pending) == 1, "the request did not show up for the approver"
        shown = json.loads(dev_broker.jit("approvals", "show", pending[0]).stdout)
        assert shown["grant"] == "dev/demo-admin"
        assert shown["owner"] == "dev:ci-job-2"
        approved = dev_broker.jit("approve", pending[0], "--ttl", "5m")
        assert "approved" in approved.stdout
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    issued = json.loads(out)
    assert issued["actions"] == ["admin"]
    assert issued["ttl"] <= 300
    token = issued["credential"]["secret"]
    jwks = pyjwt.PyJWKClient(f"{dev_broker.url}/.well-known/jwks.json")
    claims = pyjwt.decode(
        token,
        jwks.get_signing_key_from_jwt(token).key,
        algorithms=["EdDSA"],
        audience="https://demo.local",
    )
    assert claims["jti"] == issued["lease_id"]
    assert claims["scope"] == "admin"


def test_no_wait_prints_the_approval_id_and_deny_ends_it(dev_broker: DevBroker) -> None:
    identity = dev_broker.token("ci-job-3")
    out = dev_broker.jit(
        "request",
        "--resource",
        "https://demo.local",
        "--action",
        "admin",
        "--no-wait",
        token=identity,
    )
    aid = out.stdout.strip()
    assert len(aid) == 32
    assert "approval needed for grant dev/demo-admin" in out.stderr
    dev_broker.jit("deny", aid, "--reason", "not during the freeze")
    # The identical request through OAuth token exchange sees the outcome.
    resp = exchange(dev_broker, identity, scope="admin")
    assert resp.json()["error"] == "access_denied"
    assert resp.json()["approval_id"] == aid


def test_a_workload_sees_and_revokes_only_its_own_leases(dev_broker: DevBroker) -> None:
    alice, bob = dev_broker.token("alice"), dev_broker.token("bob")
    resp = exchange(dev_broker, alice, task_id="shared-name")
    lease_id = resp.json()["lease_id"]
    bob_headers = {"Authorization": f"Bearer {bob}"}
    assert (
        httpx.get(f"{dev_broker.url}/v1/leases/{lease_id}", headers=bob_headers).status_code == 404
    )
    assert (
        httpx.delete(f"{dev_broker.url}/v1/leases/{lease_id}", headers=bob_headers).status_code
        == 404
    )
    # Bob's "shared-name" task is a different task: completing it touches nothing of Alice's.
    assert (
        httpx.post(
            f"{dev_broker.url}/v1/tasks/shared-name/complete", headers=bob_headers
        ).status_code
        == 404
    )
    assert introspect(dev_broker, alice, resp.json()["access_token"])["active"] is True
    # RFC 7009: Bob cannot revoke Alice's token either, and the answer is the one an unknown
    # token gets, so the endpoint tells him nothing about which tokens are live.
    r = httpx.post(
        f"{dev_broker.url}/oauth/revoke",
        data={"token": resp.json()["access_token"]},
        headers=bob_headers,
    )
    unknown = httpx.post(
        f"{dev_broker.url}/oauth/revoke", data={"token": "not-a-token"}, headers=bob_headers
    )
    assert (r.status_code, r.content) == (unknown.status_code, unknown.content) == (200, b"{}")
    assert introspect(dev_broker, alice, resp.json()["access_token"])["active"] is True


def test_a_forged_identity_token_is_refused_with_401(dev_broker: DevBroker) -> None:
    identity = dev_broker.token("mallory")
    head, payload, sig = identity.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}AAAA"
    out = dev_broker.jit("leases", token=forged, check=False)
    assert out.returncode == 1
    assert "401" in out.stderr
    resp = exchange(dev_broker, forged)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_jit_dev_token_requires_a_running_dev_broker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess

    from tests.e2e.conftest import JIT

    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    env["JIT_HOME"] = str(tmp_path)
    out = subprocess.run(
        [JIT, "dev", "token", "--sub", "x"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "no running `jit dev`" in out.stderr


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move_when_credentials_are_issued_and_revoked(dev_broker: DevBroker) -> None:
    before = httpx.get(f"{dev_broker.url}/metrics", timeout=10)
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    identity = dev_broker.token("metrics-job")
    resp = exchange(dev_broker, identity, task_id="metrics-1")
    assert resp.status_code == 200, resp.text
    dev_broker.jit("task", "complete", "metrics-1", token=identity)
    after = httpx.get(f"{dev_broker.url}/metrics", timeout=10).text
    for name, labels in [
        ("jit_credentials_issued_total", {"issuer": "jwt"}),
        ("jit_revocations_total", {"trigger": "task_completed"}),
        ("jit_decisions_total", {"outcome": "ok"}),
        ("jit_http_requests_total", {"route": "/oauth/token"}),
    ]:
        assert _metric(after, name, **labels) >= _metric(before.text, name, **labels) + 1, name
    assert "metrics-job" not in after  # no principals as label values

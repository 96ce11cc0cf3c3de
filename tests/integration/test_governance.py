"""Session governance through the HTTP API: a resource server introspects or reports uses; use
after the task completed, from a foreign address, outside the intent or too often revokes the
task's credentials and leaves an audit record that names the rule and the evidence."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from broker.api import create_app
from broker.audit import MemorySink
from broker.config import ClientSettings, IssuerInstanceSettings, Settings
from broker.identity import DevIdentityIssuer
from broker.service import Broker, build_broker
from broker.testing import FakeClock
from issuers.jwt.keys import generate_key
from tests.auditkeys import audit_settings
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration

BASE = "http://broker.test"
RS_SECRET = "orders-api-secret-0123456789abcdef"

POLICY = """
owner: platform
workloads:
  - issuer: dev
grants:
  - name: orders-read
    issuer: jwt
    resource: https://orders.internal
    actions: [read]
    max_ttl: 1h
    approval: none
    governance:
      networks: [10.0.0.0/8]
      max_uses_per_minute: 3
  - name: reports
    issuer: jwt
    resource: https://reports.internal
    actions: [read]
    max_ttl: 1h
    approval: none
    governance:
      networks: [request]
      on_violation: alert
  - name: plain
    issuer: jwt
    resource: https://plain.internal
    actions: [read, write]
    max_ttl: 1h
    approval: none
"""


@dataclass
class Env:
    client: httpx.AsyncClient
    broker: Broker
    dev: DevIdentityIssuer
    audit: MemorySink
    clock: FakeClock

    def workload(self, sub: str = "ci-1") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dev.issue(sub, {})}"}

    @property
    def rs(self) -> dict[str, str]:
        basic = base64.b64encode(f"orders-api:{RS_SECRET}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}

    async def mint(self, resource: str = "https://orders.internal", task: str = "t1") -> Any:
        r = await self.client.post(
            "/v1/credentials",
            json={"task": {"id": task}, "issuer": "jwt", "resource": resource, "actions": ["read"]},
            headers=self.workload(),
        )
        assert r.status_code == 201, r.text
        return r.json()

    async def introspect(self, token: str, **use: str) -> dict[str, Any]:
        r = await self.client.post(
            "/oauth/introspect", data={"token": token, **use}, headers=self.rs
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def lease(self, lease_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/leases/{lease_id}", headers=self.workload())
        return dict(r.json())

    def anomalies(self) -> list[Any]:
        return [e for e in self.audit.events if e.type == "anomaly.detected"]


@pytest.fixture
async def env(
    real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Env]:
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key(keys, "EdDSA", clock.now())
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(POLICY)
    (tmp_path / "rs.secret").write_text(RS_SECRET)
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        audit=audit_settings(tmp_path / "audit"),
        policy_dir=str(tmp_path / "policies"),
        issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(keys)})},
        clients=[
            ClientSettings(
                client_id="orders-api",
                secret_file=str(tmp_path / "rs.secret"),
                permissions=["introspect", "report"],
            )
        ],
    )
    dev = DevIdentityIssuer(f"{BASE}/dev/oidc", clock)
    sink = MemorySink()
    broker = await build_broker(
        settings,
        clock=clock,
        redis=aioredis.Redis.from_url(REDIS_URL),
        dev_identity=dev,
        audit_sinks=[sink],
    )
    transport = httpx.ASGITransport(app=create_app(broker, manage_lifecycle=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Env(client, broker, dev, sink, clock)
    await broker.aclose()


async def test_every_introspection_is_a_recorded_use(env: Env) -> None:
    cred = await env.mint()
    token = cred["credential"]["secret"]
    info = await env.introspect(
        token, resource="https://orders.internal", client_address="10.1.2.3"
    )
    assert info["active"] is True
    [used] = [e for e in env.audit.events if e.type == "lease.used"]
    assert used.lease_id == cred["lease_id"]
    assert used.detail["reporter"] == "client:orders-api"
    assert used.detail["client_address"] == "10.1.2.3"
    assert env.anomalies() == []


async def test_use_from_a_foreign_address_revokes_the_task(env: Env) -> None:
    first = await env.mint()
    second = await env.mint()  # another credential of the same task
    info = await env.introspect(first["credential"]["secret"], client_address="192.0.2.7")
    assert info == {"active": False}
    for cred in (first, second):
        lease = await env.lease(cred["lease_id"])
        assert lease["state"] == "revoked"
        assert lease["revoke_trigger"] == "anomaly:foreign_address"
    [alert] = env.anomalies()
    assert alert.detail["rules"] == ["foreign_address"]
    assert alert.detail["foreign_address.address"] == "192.0.2.7"
    assert alert.detail["foreign_address.expected"] == "10.0.0.0/8"
    assert alert.lease_id == first["lease_id"]


async def test_use_outside_the_intent_revokes_the_task(env: Env) -> None:
    cred = await env.mint(resource="https://plain.internal", task="t2")
    r = await env.client.post(
        "/v1/usage",
        json={
            "token": cred["credential"]["secret"],
            "resource": "https://payments.internal",
            "action": "read",
        },
        headers=env.rs,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "lease_id": cred["lease_id"],
        "active": False,
        "violations": ["out_of_intent"],
    }
    assert (await env.lease(cred["lease_id"]))["revoke_trigger"] == "anomaly:out_of_intent"
    [alert] = env.anomalies()
    assert alert.detail["out_of_intent.resource"] == "https://payments.internal"
    assert alert.detail["out_of_intent.intent"] == "https://plain.internal"


async def test_an_action_that_was_not_granted_is_out_of_intent(env: Env) -> None:
    cred = await env.mint(resource="https://plain.internal", task="t3")
    info = await env.introspect(cred["credential"]["secret"], action="write")
    assert info == {"active": False}
    assert env.anomalies()[0].detail["out_of_intent.action"] == "write"


async def test_use_after_the_task_completed_is_an_alert_with_evidence(env: Env) -> None:
    cred = await env.mint(resource="https://plain.internal", task="t4")
    done = await env.client.post("/v1/tasks/t4/complete", headers=env.workload())
    assert done.status_code == 200
    info = await env.introspect(cred["credential"]["secret"])
    assert info == {"active": False}
    [alert] = env.anomalies()
    assert alert.detail["rules"] == ["use_after_completion"]
    assert "use_after_completion.completed_at" in alert.detail
    assert alert.detail["action"] == "revoke_task"


async def test_too_many_uses_in_a_minute_revokes(env: Env) -> None:
    cred = await env.mint()
    token = cred["credential"]["secret"]
    for _ in range(3):
        assert (await env.introspect(token, client_address="10.0.0.1"))["active"] is True
    assert (await env.introspect(token, client_address="10.0.0.1")) == {"active": False}
    assert (await env.lease(cred["lease_id"]))["revoke_trigger"] == "anomaly:rate"
    assert env.anomalies()[0].detail["rate.uses_this_minute"] == "4"


async def test_the_requesting_address_can_be_the_expected_network_and_alert_only(
    env: Env,
) -> None:
    cred = await env.mint(resource="https://reports.internal", task="t5")
    token = cred["credential"]["secret"]
    # httpx's ASGI transport presents the client as 127.0.0.1.
    assert (await env.introspect(token, client_address="127.0.0.1"))["active"] is True
    assert env.anomalies() == []
    info = await env.introspect(token, client_address="198.51.100.1")
    assert info["active"] is True  # on_violation: alert — recorded, not revoked
    [alert] = env.anomalies()
    assert alert.detail["action"] == "alert"
    assert alert.detail["foreign_address.expected"] == "request:127.0.0.1"


async def test_bad_use_reports_are_refused(env: Env) -> None:
    cred = await env.mint()
    token = cred["credential"]["secret"]
    r = await env.client.post(
        "/oauth/introspect",
        data={"token": token, "client_address": "not-an-ip"},
        headers=env.rs,
    )
    assert r.status_code == 400
    r = await env.client.post("/v1/usage", json={"resource": "x"}, headers=env.rs)
    assert r.status_code == 400
    r = await env.client.post("/v1/usage", json={"token": token, "what": 1}, headers=env.rs)
    assert r.status_code == 400
    r = await env.client.post("/v1/usage", json={"token": token}, headers=env.workload("ci-9"))
    assert r.status_code == 403
    assert [e for e in env.audit.events if e.type == "lease.used"] == []


async def test_introspection_records_carry_a_keyed_digest_of_the_token_not_the_token(
    env: Env,
) -> None:
    cred = await env.mint()
    token = cred["credential"]["secret"]
    await env.introspect(token)
    await env.introspect("not-a-token-we-issued-0123456789")
    events = [e for e in env.audit.events if e.type == "lease.introspected"]
    assert events[0].detail["token_hmac"] == env.broker.audit.hmac(token)
    assert env.broker.audit.hmac_matches(
        "not-a-token-we-issued-0123456789", str(events[1].detail["token_hmac"])
    )
    assert all(token not in str(e.detail) for e in events)


async def test_a_policy_reload_is_audited_and_a_broken_one_keeps_the_old_policy(
    env: Env,
) -> None:
    from pathlib import Path

    policy_file = Path(env.broker.settings.policy_dir) / "p.yaml"
    old = env.broker.policy.version
    policy_file.write_text(POLICY.replace("max_uses_per_minute: 3", "max_uses_per_minute: 5"))
    assert await env.broker.reload_policy()
    new = env.broker.policy.version
    assert new != old
    [reloaded] = [e for e in env.audit.events if e.type == "policy.reloaded"]
    assert reloaded.detail == {"old_version": old, "policy_version": new}
    policy_file.write_text("owner: x\ngrants: [oops\n")
    assert not await env.broker.reload_policy()
    assert env.broker.policy.version == new
    [failed] = [e for e in env.audit.events if e.type == "policy.reload_failed"]
    assert "p.yaml" in failed.reasons[0]
    await env.mint()  # still serving with the last good policy


async def test_a_signing_key_rotation_is_audited(env: Env) -> None:
    from pathlib import Path

    from broker.service.documents import KeyRotationWatcher
    from issuers.jwt.keys import generate_key

    watcher = KeyRotationWatcher(env.broker.documents, env.broker.audit)
    await watcher.check()  # the baseline, as at start
    keys_dir = Path(env.broker.settings.issuers["jwt"].config["keys_dir"])
    info = generate_key(keys_dir, "EdDSA", env.clock.now())  # what `jit keys rotate` does
    env.clock.advance(60)  # the key ring looks at its directory at most every few seconds
    await watcher.check()
    [rotated] = [e for e in env.audit.events if e.type == "keys.rotated"]
    assert rotated.detail["added"] == [info.kid]
    assert rotated.detail["removed"] == []

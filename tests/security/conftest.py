"""A broker with every kind of caller configured, for the authorization matrix and the fuzzer.

The app runs in process (httpx's ASGI transport) over the real Redis under a fresh key prefix,
with every route mounted: the jit dev routes (dev admin key, dev approver key), Slack (a fake
Slack Web API on loopback), Shared Signals, an x509 issuer (it publishes documents), a metrics
token, four OAuth clients (one per permission, and one with none) and three policy documents:

- ``matrix``: the workloads ``w-*`` may get read/write on https://demo.local, and admin with
  the approval of ``alice`` or the dev approver; no ``introspect`` permission;
- ``rs``: the workload ``rs-orders`` may introspect, and nothing else.

``World.owner_objects()`` makes fresh objects owned by ``w-owner`` (a lease in a task, and a
pending approval request) whose ids fill the path parameters, so that another caller's request
hits real objects.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from broker.api import create_app
from broker.audit import MemorySink
from broker.config import (
    ApprovalSettings,
    ClientSettings,
    IssuerInstanceSettings,
    MetricsSettings,
    PersonSettings,
    Settings,
    SlackSettings,
    SsfReceiverSettings,
    SsfSettings,
)
from broker.identity import DevIdentityIssuer
from broker.service import Broker, build_broker
from broker.testing import FakeClock
from broker.types import Secret
from issuers.jwt.keys import generate_key
from tests.auditkeys import audit_settings
from tests.conftest import REDIS_URL, _scan
from tests.fakes.slack_api import FakeSlack
from tests.leakscan import LEAKS, redis_values

BASE = "http://broker.matrix"
OWNER = "w-owner"
OTHER = "w-other"
INTROSPECTOR = "rs-orders"
APPROVER = "alice"  # a configured person; her identity token is a dev token with sub "alice"
APPROVER_SLACK = "U0ALICE"
SLACK_SIGNING_SECRET = "matrix-slack-signing-secret-0123"  # a test value
CLIENT_SECRET = "matrix-client-secret-0123456789"
DEV_ADMIN_KEY = "matrix-dev-admin-key-" + "a" * 24
DEV_APPROVER_KEY = "jitdev-approver-" + "b" * 32
METRICS_TOKEN = "matrix-metrics-token-0123456789"
#: client id → its permissions
CLIENTS: dict[str, list[Any]] = {
    "rs-introspect": ["introspect"],
    "rs-revoke": ["revoke"],
    "rs-report": ["report"],
    "rs-none": [],
}

POLICY = """
owner: matrix
workloads:
  - issuer: dev
    claims:
      sub: {glob: "w-*"}
grants:
  - name: rw
    issuer: jwt
    resource: https://demo.local
    actions: [read, write]
    max_ttl: 1h
    approval: none
  - name: admin
    issuer: jwt
    resource: https://demo.local
    actions: [admin]
    max_ttl: 1h
    approval:
      approvers: [alice, dev-approver]
"""

RESOURCE_SERVER_POLICY = """
owner: rs
workloads:
  - issuer: dev
    claims:
      sub: rs-orders
permissions: [introspect]
"""


@dataclass
class Owned:
    """Objects of ``w-owner``, fresh for one request."""

    lease_id: str
    task_id: str
    secret: str
    approval_id: str
    approval_task_id: str


@dataclass
class World:
    client: httpx.AsyncClient
    broker: Broker
    dev: DevIdentityIssuer
    clock: FakeClock
    redis: aioredis.Redis
    prefix: str
    audit: MemorySink
    slack: FakeSlack
    expired_token: str
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def token(self, sub: str) -> str:
        return self.dev.issue(sub, {})

    def bearer(self, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub)}"}

    async def owner_objects(self) -> Owned:
        n = next(self._seq)
        task_id, approval_task = f"task-{n}", f"approval-{n}"
        headers = self.bearer(OWNER)
        body: dict[str, Any] = {
            "task": {"id": task_id, "purpose": "matrix"},
            "issuer": "jwt",
            "resource": "https://demo.local",
            "actions": ["read"],
            "ttl": 600,
        }
        r = await self.client.post("/v1/credentials", json=body, headers=headers)
        assert r.status_code == 201, r.text
        issued = r.json()
        body.update(task={"id": approval_task, "purpose": "matrix"}, actions=["admin"])
        r = await self.client.post("/v1/credentials", json=body, headers=headers)
        assert r.status_code == 202, r.text
        await self.broker.approvals.idle()  # its Slack post is written before anything else
        return Owned(
            lease_id=issued["lease_id"],
            task_id=task_id,
            secret=issued["credential"]["secret"],
            approval_id=r.json()["approval_id"],
            approval_task_id=approval_task,
        )

    async def snapshot(self) -> dict[bytes, bytes | None]:
        """Every key under the prefix with its serialized value, except the audit trail
        (refusals are audited: that is a change we want). Bookkeeping of earlier requests
        still riding with the next audit batch (a lease's "record pending" marker being
        cleared) is sent first, so it is not taken for the effect of the request measured."""
        await self.broker.audit.flush()
        keys = sorted([k async for k in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000)])
        keys = [k for k in keys if b":{audit}:" not in k]
        if not keys:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.dump(k)
            values = await pipe.execute()
        return dict(zip(keys, values, strict=True))


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@asynccontextmanager
async def open_world(tmp_path: Path, slack: FakeSlack) -> AsyncIterator[World]:
    """A World on the running event loop, under a fresh key prefix that is emptied after."""
    key_prefix = f"jittest-{uuid.uuid4().hex[:12]}"
    real_redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with _world(real_redis, key_prefix, tmp_path, slack) as world:
            yield world
    finally:
        # As tests/conftest.py's real_redis: the suite's secret scan reads the values, then
        # the keys go.
        LEAKS.redis.extend(await redis_values(real_redis, f"{key_prefix}:*"))
        async for batch in _scan(real_redis, f"{key_prefix}:*"):
            await real_redis.unlink(*batch)
        await real_redis.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, slack: FakeSlack) -> AsyncIterator[World]:
    """One broker for a whole test module (building one takes a third of a second); tests
    use fresh objects (:meth:`World.owner_objects`), so they do not see each other."""
    async with open_world(tmp_path_factory.mktemp("world"), slack) as world:
        yield world


@asynccontextmanager
async def _world(
    real_redis: aioredis.Redis, key_prefix: str, tmp_path: Path, slack: FakeSlack
) -> AsyncIterator[World]:
    clock = FakeClock()
    dev = DevIdentityIssuer(f"{BASE}/dev/oidc", clock)
    # A token that was valid an hour ago (the leeway is 30 s).
    expired = dev.issue(OWNER, {}, ttl=timedelta(seconds=60))
    clock.advance(3600)
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key(keys, "EdDSA", clock.now())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "matrix.yaml").write_text(POLICY)
    (policies / "rs.yaml").write_text(RESOURCE_SERVER_POLICY)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name, value in {
        "client": CLIENT_SECRET,
        "metrics": METRICS_TOKEN,
        "bot": slack.token,
        "signing": SLACK_SIGNING_SECRET,
    }.items():
        (secrets_dir / name).write_text(value)
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        policy_dir=str(policies),
        audit=audit_settings(tmp_path / "audit"),
        issuers={
            "jwt": IssuerInstanceSettings(
                type="jwt", config={"keys_dir": str(keys), "max_ttl": "1h", "default_ttl": "15m"}
            ),
            # Under jit dev the x509 issuer makes its CA in memory; it publishes ca.pem.
            "mtls": IssuerInstanceSettings(
                type="x509", config={"trust_domain": "matrix.local", "resources": ["svc"]}
            ),
        },
        clients=[
            ClientSettings(
                client_id=cid,
                secret_file=str(secrets_dir / "client"),
                permissions=perms,
                resources=["https://demo.local"],
            )
            for cid, perms in CLIENTS.items()
        ],
        approvals=ApprovalSettings(
            people={APPROVER: PersonSettings(slack=APPROVER_SLACK, identities=[f"dev:{APPROVER}"])},
            max_pending_per_workload=1000,
            slack=SlackSettings(
                bot_token_file=str(secrets_dir / "bot"),
                signing_secret_file=str(secrets_dir / "signing"),
                api_url=slack.url,
                default_channel="C0MATRIX",
            ),
        ),
        ssf=SsfSettings(
            receivers=[
                SsfReceiverSettings(
                    name="orders",
                    endpoint="http://127.0.0.1:9/ssf",  # never called: the pusher is not started
                    audience="https://orders.matrix",
                )
            ]
        ),
        metrics=MetricsSettings(token_file=str(secrets_dir / "metrics")),
    )
    sink = MemorySink()
    broker = await build_broker(
        settings,
        clock=clock,
        redis=aioredis.Redis.from_url(REDIS_URL),
        dev=True,
        dev_identity=dev,
        dev_admin_key=Secret(DEV_ADMIN_KEY),
        dev_approver_key=Secret(DEV_APPROVER_KEY),
        audit_sinks=[sink],
    )
    app = create_app(broker, manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield World(
            client=client,
            broker=broker,
            dev=dev,
            clock=clock,
            redis=real_redis,
            prefix=key_prefix,
            audit=sink,
            slack=slack,
            expired_token=expired,
        )
        await broker.approvals.idle()
    await broker.aclose()

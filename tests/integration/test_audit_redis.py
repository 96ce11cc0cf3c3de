"""The audit trail on the real Redis: two writers (two clients) make one chain without forks;
the exported chain verifies with the CLI; a webhook receiver on 127.0.0.1 that is down for a
while gets every record exactly once, in order, from two delivering replicas; the file sink
written by two replicas is one verifiable chain; the receipt of a lease minted by the real
broker (approval, introspection, task completion) tells its story."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from broker.api import create_app
from broker.audit import (
    CHECKPOINT,
    AuditChain,
    AuditDelivery,
    AuditLog,
    CheckpointSigner,
    JsonLinesFileSink,
    WebhookSink,
)
from broker.audit.signing import write_private_key
from broker.audit.verify import verify_lines
from broker.cli.audit import audit
from broker.clock import SystemClock
from broker.config import (
    ApprovalSettings,
    AuditSettings,
    ClientSettings,
    IssuerInstanceSettings,
    PersonSettings,
    RedisSettings,
    Settings,
    WebhookSinkSettings,
)
from broker.identity import DevIdentityIssuer
from broker.service import build_broker
from broker.state.connect import redis_client
from broker.testing import FakeClock
from issuers.jwt.keys import generate_key
from tests.conftest import REDIS_URL
from tests.redisfarm import redis_config_file

pytestmark = pytest.mark.integration

TOKEN = "audit-webhook-token-9f8e7d6c5b4a3210"


def chained(
    redis: aioredis.Redis, prefix: str, clock: FakeClock, signer: CheckpointSigner, **kw: Any
) -> AuditLog:
    chain = AuditChain(redis, prefix, clock, signer, checkpoint_every=50, max_batch=8, **kw)
    return AuditLog(clock, chain=chain)


async def cli(*args: str) -> Result:
    """The click command in a worker thread (the CLI runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, audit, list(args), catch_exceptions=False)


async def until(check: Any, what: str, *, clock: FakeClock | None = None) -> None:
    """Poll ``check`` (a hang guard, not a timing assertion)."""
    for _ in range(4000):
        if await check():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"gave up waiting for {what}")


# -- one chain, many writers --------------------------------------------------------------


async def test_two_brokers_on_two_clients_write_one_chain_that_exports_and_verifies(
    real_redis: aioredis.Redis,
    test_redis: RedisSettings,
    key_prefix: str,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    signer = CheckpointSigner.generate()
    other_client = redis_client(test_redis)
    config = redis_config_file(tmp_path, test_redis)
    a = chained(real_redis, key_prefix, clock, signer)
    b = chained(other_client, key_prefix, clock, signer)
    per_writer = 300
    await asyncio.gather(
        *(
            log.emit("lease.minted", lease_id=f"{name}-{i}", detail={"writer": name, "i": i})
            for i in range(per_writer)
            for name, log in (("a", a), ("b", b))
        )
    )

    out = tmp_path / "export.jsonl"
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signer.jwks()))
    exported = await cli(
        "export", "--config", str(config), "--prefix", key_prefix, "--out", str(out)
    )
    assert exported.exit_code == 0, exported.output
    records = [msgspec.json.decode(line) for line in out.read_bytes().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert len({r["hash"] for r in records}) == len(records)  # no fork: one record per seq
    events = [r for r in records if r["type"] != CHECKPOINT]
    assert sorted(r["lease_id"] for r in events) == sorted(
        f"{w}-{i}" for w in "ab" for i in range(per_writer)
    )
    assert len(records) - len(events) == 12  # a checkpoint after every 50

    verified = await cli("verify", str(out), "--key", str(jwks))
    assert verified.exit_code == 0, verified.output
    assert f"OK: {len(records)} records" in verified.output

    partial = tmp_path / "from-100.jsonl"
    result = await cli(
        "export",
        "--config",
        str(config),
        "--prefix",
        key_prefix,
        "--out",
        str(partial),
        "--from",
        "100",
    )
    assert result.exit_code == 0
    assert (await cli("verify", str(partial), "--key", str(jwks))).exit_code == 1
    assert (await cli("verify", str(partial), "--key", str(jwks), "--partial")).exit_code == 0
    await other_client.aclose()


# -- the webhook: down for a while, then every record exactly once, in order --------------


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records the batches it accepts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.batches: list[list[dict[str, Any]]] = []
        self.failing = 0  # answer 503 to this many requests first
        self.requests = 0
        self.bad_auth = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def seqs(self) -> list[int]:
        with self.lock:
            return [r["seq"] for batch in self.batches for r in batch]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests += 1
                    if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                        receiver.bad_auth += 1
                        status = 401
                    elif receiver.failing > 0:
                        receiver.failing -= 1
                        status = 503
                    else:
                        receiver.batches.append(json.loads(body))
                        status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


def webhook_replica(
    redis: aioredis.Redis, prefix: str, token_file: Path, port: int, name: str
) -> AuditDelivery:
    settings = WebhookSinkSettings(
        name="siem",
        url=f"http://127.0.0.1:{port}/ingest",
        token_file=str(token_file),
        batch_size=40,
        timeout=timedelta(seconds=5),
    )
    return AuditDelivery(
        redis,
        prefix,
        [WebhookSink(settings)],
        SystemClock(),  # the lock (30 s) never runs out here; backoff is a few ms
        replica_id=name,
        poll_interval=timedelta(milliseconds=5),
        backoff_base=timedelta(milliseconds=5),
        backoff_cap=timedelta(milliseconds=40),
    )


async def test_a_webhook_that_is_down_for_a_while_gets_every_record_once_in_order(
    real_redis: aioredis.Redis,
    test_redis: RedisSettings,
    key_prefix: str,
    clock: FakeClock,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    signer = CheckpointSigner.generate()
    writer = chained(real_redis, key_prefix, clock, signer)
    second_client = redis_client(test_redis)
    replicas = [
        webhook_replica(real_redis, key_prefix, token_file, receiver.port, "a"),
        webhook_replica(second_client, key_prefix, token_file, receiver.port, "b"),
    ]
    stop = asyncio.Event()
    loops = [asyncio.create_task(r.run(stop)) for r in replicas]

    for i in range(120):
        await writer.emit("decision", detail={"i": i})

    async def failed_a_few_times() -> bool:
        return sum(r.failures["siem"] for r in replicas) >= 5

    await until(failed_a_few_times, "delivery attempts against the closed port")
    assert receiver.requests == 0
    for i in range(120, 200):  # more records while it is down
        await writer.emit("decision", detail={"i": i})
    assert (await replicas[0].sink_lag())["siem"] == 204  # 200 events + 4 checkpoints

    receiver.failing = 3  # it comes back, and stumbles a few times (503)
    receiver.start()

    async def all_delivered() -> bool:
        return (await replicas[0].sink_lag())["siem"] == 0

    await until(all_delivered, "the receiver to catch up")
    for i in range(200, 230):  # and it keeps up afterwards
        await writer.emit("decision", detail={"i": i})
    await until(all_delivered, "the last records")
    stop.set()
    await asyncio.gather(*loops)

    head, _ = await writer.chain.head()  # type: ignore[union-attr]
    assert receiver.seqs == list(range(1, head + 1))  # every record, once, in order
    assert receiver.bad_auth == 0
    lines = [msgspec.json.encode(r) for batch in receiver.batches for r in batch]
    keys = {signer.kid: signer._private}
    assert verify_lines(lines, keys).ok  # the receiver can verify what it got
    for r in replicas:
        await r.aclose()
    await second_client.aclose()


# -- the file sink, written by two replicas ---------------------------------------------


async def test_two_replicas_write_one_audit_file_that_verifies(
    real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock, tmp_path: Path
) -> None:
    signer = CheckpointSigner.generate()
    writer = chained(real_redis, key_prefix, clock, signer)
    path = tmp_path / "audit.jsonl"
    second_client = aioredis.Redis.from_url(REDIS_URL)
    replicas = [
        AuditDelivery(
            client,
            key_prefix,
            [JsonLinesFileSink(path, batch_size=16)],
            SystemClock(),
            replica_id=name,
            poll_interval=timedelta(milliseconds=5),
        )
        for client, name in ((real_redis, "a"), (second_client, "b"))
    ]
    stop = asyncio.Event()
    loops = [asyncio.create_task(r.run(stop)) for r in replicas]
    await asyncio.gather(*(writer.emit("lease.used", detail={"i": i}) for i in range(150)))

    async def caught_up() -> bool:
        return (await replicas[1].sink_lag())["file"] == 0

    await until(caught_up, "the file sink")
    stop.set()
    await asyncio.gather(*loops)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signer.jwks()))
    result = await cli("verify", str(path), "--key", str(jwks))
    assert result.exit_code == 0, result.output
    assert "OK: 153 records" in result.output
    for r in replicas:
        await r.aclose()
    await second_client.aclose()


# -- the receipt of a lease the real broker minted ---------------------------------------

BASE = "http://broker.test"
CLIENT_SECRET = "orders-api-client-secret-0123456789"
POLICY = """
owner: platform
workloads:
  - issuer: dev
    claims:
      sub: {glob: "ci-*"}
grants:
  - name: deploy
    issuer: jwt
    resource: https://prod.local
    actions: [deploy]
    max_ttl: 1h
    default_ttl: 10m
    approval:
      approvers: [alice]
      expires_after: 10m
"""


@pytest.fixture
async def broker_env(
    real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, DevIdentityIssuer, CheckpointSigner]]:
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key(keys, "EdDSA", clock.now())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "platform.yaml").write_text(POLICY)
    secret = tmp_path / "client.secret"
    secret.write_text(CLIENT_SECRET)
    signing_key = tmp_path / "audit-signing.pem"
    write_private_key(signing_key)
    hmac_key = tmp_path / "audit-hmac.key"
    hmac_key.write_text("0123456789abcdef" * 4)
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        policy_dir=str(policies),
        issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(keys)})},
        clients=[ClientSettings(client_id="orders-api", secret_file=str(secret))],
        approvals=ApprovalSettings(
            people={"alice": PersonSettings(identities=["dev:alice"])},
        ),
        audit=AuditSettings(signing_key_file=str(signing_key), hmac_key_file=str(hmac_key)),
    )
    dev = DevIdentityIssuer(f"{BASE}/dev/oidc", clock)
    broker = await build_broker(
        settings,
        clock=clock,
        redis=aioredis.Redis.from_url(REDIS_URL),
        dev_identity=dev,
        audit_sinks=[],
    )
    signer = CheckpointSigner.from_file(signing_key)
    if broker.audit.chain is None:
        # Until build_broker builds its AuditLog with build_audit(): chain the broker's own
        # AuditLog (the manager, the approvals and the service share this one object).
        broker.audit.chain = AuditChain(broker.redis, key_prefix, clock, signer)
    app = create_app(broker, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c, dev, signer
    await broker.aclose()


async def test_the_receipt_of_a_lease_minted_by_the_real_broker(
    broker_env: tuple[httpx.AsyncClient, DevIdentityIssuer, CheckpointSigner],
    key_prefix: str,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    client, dev, signer = broker_env
    workload = {"Authorization": f"Bearer {dev.issue('ci-1', {})}"}
    alice = {"Authorization": f"Bearer {dev.issue('alice', {})}"}
    body = {
        "task": {"id": "release-9"},
        "issuer": "jwt",
        "resource": "https://prod.local",
        "actions": ["deploy"],
    }
    r = await client.post("/v1/credentials", json=body, headers=workload)
    assert r.status_code == 202, r.text
    approval_id = r.json()["approval_id"]
    clock.advance(30)
    r = await client.post(f"/v1/approvals/{approval_id}/approve", json={}, headers=alice)
    assert r.json()["state"] == "approved", r.text
    r = await client.get(f"/v1/approvals/{approval_id}", headers=workload)
    issued = r.json()
    lease_id = issued["lease_id"]
    token = issued["credential"]["credential"]["secret"]
    basic = base64.b64encode(f"orders-api:{CLIENT_SECRET}".encode()).decode()
    for _ in range(2):
        clock.advance(5)
        r = await client.post(
            "/oauth/introspect", data={"token": token}, headers={"Authorization": f"Basic {basic}"}
        )
        assert r.json()["active"] is True
    r = await client.post("/v1/tasks/release-9/complete", headers=workload)
    assert r.status_code == 200, r.text

    out = tmp_path / "chain.jsonl"
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signer.jwks()))
    exported = await cli(
        "export", "--redis-url", REDIS_URL, "--prefix", key_prefix, "--out", str(out)
    )
    assert exported.exit_code == 0, exported.output
    assert (await cli("verify", str(out), "--key", str(jwks))).exit_code == 0
    assert token.encode() not in out.read_bytes()  # ids, never the credential

    result = await cli("show", "--lease", lease_id, str(out), "--json")
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.output)
    assert receipt["principal"] == "dev:ci-1"
    assert receipt["task_id"] == "release-9"
    stages = [s["stage"] for s in receipt["steps"]]
    types = [s["type"] for s in receipt["steps"]]
    assert stages[0] == "identity"
    assert types[1] == "decision"
    assert receipt["steps"][1]["outcome"] == "approval_required"
    assert "approval.opened" in types
    assert "approval.reviewed" in types
    assert types.index("approval.opened") < types.index("lease.minted")
    assert types.count("lease.introspected") == 2
    revoked = receipt["steps"][types.index("lease.revoked")]
    assert "trigger: task_completed" in revoked["summary"]
    assert "task.completed" in types
    assert (
        types.index("lease.minted")
        < types.index("lease.introspected")
        < types.index("lease.revoked")
    )
    human = await cli("show", "--lease", lease_id, str(out))
    assert "Credential receipt" in human.output

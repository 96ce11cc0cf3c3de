"""The SSF transmitter end to end: real Redis, a real RFC 8935 receiver on 127.0.0.1.

:class:`LocalReceiver` is a push endpoint (stdlib ``http.server`` in a thread) as RFC 8935
describes one: it takes ``POST`` with ``Content-Type: application/secevent+jwt`` and a bearer
token, and answers ``202 Accepted``; it can be made to answer ``503``, to answer ``400`` with an
RFC 8935 §2.3 error, or to be gone (connection refused) and come back on the same port.
Each SET is verified here with PyJWT against ``transmitter.jwks()`` — an implementation
independent of the one that signed it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import AuditLog, MemorySink
from broker.config import SsfReceiverSettings, SsfSettings
from broker.ssf import CREDENTIAL_MEMBER, SESSION_REVOKED, SsfTransmitter
from broker.testing import FakeClock
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration

ISSUER = "https://jit.example.test"
AUDIENCE = "https://rs.example.test/caep"


class LocalReceiver:
    """An RFC 8935 push receiver on 127.0.0.1. ``received`` holds every SET it accepted (202),
    in arrival order; ``attempts`` counts every request."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.mode = "up"  # up | 503 | 400
        self.error = {"err": "invalid_audience", "description": "unknown audience"}
        self.received: list[str] = []
        self.attempts = 0
        self.bad_requests: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ssf/push"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self, status: int, body: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                with receiver._lock:
                    receiver.attempts += 1
                    mode = receiver.mode
                    if self.path != "/ssf/push":
                        receiver.bad_requests.append(f"path {self.path}")
                    if self.headers.get("Content-Type") != "application/secevent+jwt":
                        receiver.bad_requests.append("content-type")
                    if self.headers.get("Accept") != "application/json":
                        receiver.bad_requests.append("accept")
                    if receiver.token is not None and not secrets.compare_digest(
                        self.headers.get("Authorization", ""), f"Bearer {receiver.token}"
                    ):
                        self._answer(401, {"err": "authentication_failed"})
                        return
                    if mode == "503":
                        self._answer(503)
                        return
                    if mode == "400":
                        self._answer(400, receiver.error)
                        return
                    receiver.received.append(body)
                self._answer(202)

        return Handler

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Gone: the port refuses connections until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def claims(self) -> list[dict[str, Any]]:
        with self._lock:
            tokens = list(self.received)
        return [
            jwt.decode(t, options={"verify_signature": False, "verify_aud": False}) for t in tokens
        ]

    def lease_ids(self) -> list[str]:
        return [c["sub_id"]["id"] for c in self.claims()]


@pytest.fixture
def token() -> str:
    return "rcv-" + secrets.token_urlsafe(24)


@pytest.fixture
def receiver(token: str) -> Iterator[LocalReceiver]:
    r = LocalReceiver(token)
    yield r
    r.stop()


@pytest.fixture
def token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "receiver-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def clock() -> FakeClock:
    # Real "now", so PyJWT's iat check passes; only the tests move it on.
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def make(
    real_redis: aioredis.Redis,
    key_prefix: str,
    clock: FakeClock,
    receiver: LocalReceiver,
    token_file: str,
) -> AsyncIterator[Callable[..., SsfTransmitter]]:
    made: list[SsfTransmitter] = []

    def factory(redis: aioredis.Redis | None = None, **kw: Any) -> SsfTransmitter:
        settings = kw.pop(
            "settings",
            SsfSettings(
                receivers=[
                    SsfReceiverSettings(
                        name="rs",
                        endpoint=receiver.url,
                        audience=AUDIENCE,
                        token_file=token_file,
                        timeout=timedelta(seconds=5),
                    )
                ]
            ),
        )
        t = SsfTransmitter(
            settings,
            redis or real_redis,
            key_prefix,
            clock,
            issuer_url=ISSUER,
            dev=kw.pop("dev", True),
            **kw,
        )
        made.append(t)
        return t

    yield factory
    for t in made:
        await t.aclose()


def lease_id(i: int) -> str:
    return f"{i:016x}.{secrets.token_hex(16)}"


async def revoke(audit: AuditLog, lease: str, trigger: str = "ttl") -> None:
    """What LeaseManager._revoke emits once a lease is revoked."""
    await audit.emit(
        "lease.revoked",
        principal="github:repo:acme/app",
        lease_id=lease,
        task_id="deploy-7",
        issuer="jwt",
        detail={"trigger": trigger, "attempts": 1},
    )


def write_key(tmp_path: Path, kind: str) -> str:
    private = (
        Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    path = tmp_path / f"ssf-{kind}.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return str(path)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (polling) until ``predicate()`` holds; fail after ``timeout`` seconds. A guard
    against hanging, not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail("condition not reached")
        await asyncio.sleep(0.01)


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "alg"), [("ed25519", "EdDSA"), ("p256", "ES256")])
async def test_each_revocation_reaches_the_receiver_as_a_correctly_signed_set(
    make: Callable[..., SsfTransmitter],
    receiver: LocalReceiver,
    clock: FakeClock,
    token_file: str,
    tmp_path: Path,
    kind: str,
    alg: str,
) -> None:
    settings = SsfSettings(
        signing_key_file=write_key(tmp_path, kind),
        receivers=[
            SsfReceiverSettings(
                name="rs", endpoint=receiver.url, audience=AUDIENCE, token_file=token_file
            )
        ],
    )
    t = make(settings=settings, dev=False)
    audit = AuditLog(clock, [t.sink()])
    leases = [lease_id(i) for i in range(3)]
    for lease, trigger in zip(leases, ["ttl", "task_completed", "explicit"], strict=True):
        await revoke(audit, lease, trigger)
    assert await t.run_once() == 3
    assert receiver.bad_requests == []

    keys = {k["kid"]: jwt.PyJWK(k) for k in t.jwks()["keys"]}
    seen_jti = set()
    for body, lease, trigger in zip(
        receiver.received, leases, ["ttl", "task_completed", "explicit"], strict=True
    ):
        header = jwt.get_unverified_header(body)
        assert header["alg"] == alg
        assert header["typ"] == "secevent+jwt"
        claims = jwt.decode(
            body,
            keys[header["kid"]],
            algorithms=[alg],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["iss", "aud", "iat", "jti"]},
        )
        assert claims["sub_id"] == {"format": "opaque", "id": lease}
        assert set(claims["events"]) == {SESSION_REVOKED}
        event = claims["events"][SESSION_REVOKED]
        assert event["subject"] == {"format": "opaque", "id": lease}
        assert event["event_timestamp"] == int(clock.now().timestamp())
        assert event[CREDENTIAL_MEMBER] == {
            "lease_id": lease,
            "task_id": "deploy-7",
            "issuer": "jwt",
            "trigger": trigger,
        }
        assert "deploy-7" in event["reason_admin"]["en"]
        assert "exp" not in claims
        seen_jti.add(claims["jti"])
    assert len(seen_jti) == 3
    assert await t.lag() == {"rs": 0}


async def test_a_receiver_that_is_down_gets_every_set_once_in_order_after_it_comes_back(
    make: Callable[..., SsfTransmitter], receiver: LocalReceiver, clock: FakeClock
) -> None:
    t = make(backoff_base=timedelta(seconds=1), backoff_cap=timedelta(seconds=30))
    audit = AuditLog(clock, [t.sink()])
    leases = [lease_id(i) for i in range(12)]

    receiver.mode = "503"
    for lease in leases[:4]:
        await revoke(audit, lease)
    for i in range(3):
        if i:
            clock.advance(timedelta(seconds=30))  # past any backoff (capped at 30s)
        assert await t.run_once() == 0
    assert await t.lag() == {"rs": 4}

    receiver.stop()  # now connection refused
    for lease in leases[4:8]:
        await revoke(audit, lease)
    for _ in range(3):
        clock.advance(timedelta(seconds=30))
        assert await t.run_once() == 0
    status = (await t.status())["rs"]
    assert status.attempts == 6
    assert status.last_error == "ConnectError"
    assert status.lag == 8

    receiver.mode = "up"
    receiver.start()  # back, on the same port
    for lease in leases[8:]:
        await revoke(audit, lease)
    assert await t.run_once() == 0  # still backing off: the outage delays ...
    clock.advance(timedelta(seconds=30))
    assert await t.run_once() == 12  # ... and never drops
    assert receiver.lease_ids() == leases
    assert len({c["jti"] for c in receiver.claims()}) == 12
    assert await t.run_once() == 0
    assert receiver.lease_ids() == leases  # exactly once
    assert await t.lag() == {"rs": 0}
    assert (await t.status())["rs"].attempts == 0


async def test_a_400_with_an_rfc8935_error_is_audited_and_retried_until_acknowledged(
    make: Callable[..., SsfTransmitter], receiver: LocalReceiver, clock: FakeClock
) -> None:
    memory = MemorySink()
    t = make(audit=AuditLog(clock, [memory]))
    audit = AuditLog(clock, [t.sink()])
    leases = [lease_id(i) for i in range(2)]
    receiver.mode = "400"
    for lease in leases:
        await revoke(audit, lease)
    for _ in range(4):
        await t.run_once()
        clock.advance(timedelta(minutes=5))
    assert receiver.received == []
    failed = [e for e in memory.events if e.type == "ssf.delivery_failed"]
    assert [e.detail["attempts"] for e in failed] == [1, 2, 4]
    assert {(e.lease_id, e.detail["status"], e.detail["err"]) for e in failed} == {
        (leases[0], 400, "invalid_audience")
    }
    receiver.mode = "up"
    assert await t.run_once() == 2
    assert receiver.lease_ids() == leases


async def test_two_replicas_running_the_loop_deliver_each_set_once_in_order(
    make: Callable[..., SsfTransmitter], receiver: LocalReceiver, clock: FakeClock
) -> None:
    other = aioredis.Redis.from_url(REDIS_URL)
    try:
        replicas = [make(), make(redis=other)]
        audits = [AuditLog(clock, [r.sink()]) for r in replicas]
        leases = [lease_id(i) for i in range(40)]
        stop = asyncio.Event()
        loops = [asyncio.create_task(r.run(stop)) for r in replicas]
        for i, lease in enumerate(leases):
            await revoke(audits[i % 2], lease)  # both replicas revoke, interleaved
            if i % 7 == 0:
                await asyncio.sleep(0)
        # and both also run rounds by hand, racing the loops
        for _ in range(5):
            await asyncio.gather(*(r.run_once() for r in replicas))
        await until(lambda: len(receiver.received) >= len(leases))
        await asyncio.gather(*(r.run_once() for r in replicas))
        stop.set()
        await asyncio.gather(*loops)
    finally:
        await other.aclose()
    assert receiver.lease_ids() == leases
    assert receiver.attempts == len(leases)  # not one POST twice
    assert await replicas[0].lag() == {"rs": 0}


async def test_a_replica_that_dies_holding_the_lock_is_replaced_when_the_lock_runs_out(
    make: Callable[..., SsfTransmitter], receiver: LocalReceiver, clock: FakeClock
) -> None:
    dead, alive = make(), make()
    audit = AuditLog(clock, [alive.sink()])
    await revoke(audit, lease_id(1))
    now = clock.now()
    # The dead replica took the lock (5s timeout: held for 2 x 5s + 5s) and never came back.
    got = await dead.outbox.acquire(
        "rs",
        "dead-token",
        now_ms=int(now.timestamp() * 1000),
        until_ms=int((now + timedelta(seconds=15)).timestamp() * 1000),
    )
    assert got.status == "ok"
    assert await alive.run_once() == 0
    assert receiver.attempts == 0
    clock.advance(timedelta(seconds=15))
    assert await alive.run_once() == 1
    # The dead replica's late acknowledgement is refused: the lock is not its own any more.
    assert got.cursor is not None
    (record,) = await dead.outbox.read(got.cursor, 10)
    status, _ = await dead.outbox.ack(
        "rs", "dead-token", frm=got.cursor, to=record, forget_before_ms=0
    )
    assert status == "lost"


async def test_the_loop_pushes_a_local_revocation_without_waiting_for_the_poll(
    make: Callable[..., SsfTransmitter], receiver: LocalReceiver, clock: FakeClock
) -> None:
    t = make(poll_interval=timedelta(minutes=10))
    audit = AuditLog(clock, [t.sink()])
    stop = asyncio.Event()
    loop = asyncio.create_task(t.run(stop))
    await asyncio.sleep(0)
    lease = lease_id(1)
    await revoke(audit, lease)
    await until(lambda: len(receiver.received) == 1)
    stop.set()
    await loop
    assert receiver.lease_ids() == [lease]


async def test_the_outbox_is_trimmed_once_every_receiver_has_it_and_forgets_removed_ones(
    make: Callable[..., SsfTransmitter],
    receiver: LocalReceiver,
    real_redis: aioredis.Redis,
    clock: FakeClock,
    token_file: str,
) -> None:
    def settings(*names: str) -> SsfSettings:
        return SsfSettings(
            receivers=[
                SsfReceiverSettings(
                    name=n, endpoint=receiver.url, audience=n, token_file=token_file
                )
                for n in names
            ]
        )

    both = make(settings=settings("a", "b"))
    await both.register()
    only_a = make(settings=settings("a"), forget_after=timedelta(days=1))
    audit = AuditLog(clock, [only_a.sink()])
    for i in range(5):
        await revoke(audit, lease_id(i))
    assert await only_a.run_once() == 5
    # "b" was configured on a replica recently: the outbox keeps what it has not had.
    assert await real_redis.xlen(both.outbox.keys.outbox) == 5
    assert await both.lag() == {"a": 0, "b": 5}
    clock.advance(timedelta(days=2))  # "b" is configured nowhere any more: forgotten
    await revoke(audit, lease_id(9))
    assert await only_a.run_once() == 1
    assert await real_redis.xlen(only_a.outbox.keys.outbox) == 1  # the last entry stays
    assert await real_redis.hkeys(only_a.outbox.keys.cursors) == [b"a"]


async def test_no_receiver_token_reaches_redis_or_the_audit_trail(
    make: Callable[..., SsfTransmitter],
    receiver: LocalReceiver,
    real_redis: aioredis.Redis,
    key_prefix: str,
    clock: FakeClock,
    token: str,
) -> None:
    memory = MemorySink()
    t = make(audit=AuditLog(clock, [memory]))
    audit = AuditLog(clock, [t.sink()])
    receiver.mode = "503"
    await revoke(audit, lease_id(1))
    await t.run_once()
    receiver.mode = "up"
    clock.advance(timedelta(minutes=5))
    assert await t.run_once() == 1
    dump = b""
    async for key in real_redis.scan_iter(match=f"{key_prefix}:*"):
        raw = await real_redis.type(key)
        kind = raw.decode() if isinstance(raw, bytes) else raw
        if kind == "stream":
            dump += repr(await real_redis.xrange(key)).encode()
        elif kind == "hash":
            dump += repr(await real_redis.hgetall(key)).encode()
        else:
            dump += repr(await real_redis.get(key)).encode()
    assert dump
    assert token.encode() not in dump
    assert all(token not in repr(e) for e in memory.events)

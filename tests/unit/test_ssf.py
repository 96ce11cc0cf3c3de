"""The SSF transmitter's pure parts and its edges, on fakeredis and httpx.MockTransport.

The SET shape (pinned), jti, the signing key and JWKS, the configuration document, fail-closed
configuration, the audit sink, and how each kind of receiver answer is treated. The real HTTP
receiver and the real Redis are in tests/integration/test_ssf_redis.py.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis import exceptions as redis_exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from broker.audit import AuditEvent, AuditLog, MemorySink
from broker.config import SsfReceiverSettings, SsfSettings
from broker.errors import ConfigError
from broker.ssf import (
    CREDENTIAL_MEMBER,
    JWKS_PATH,
    SESSION_REVOKED,
    OutboxEntry,
    Revocation,
    SetSigner,
    SsfTransmitter,
    set_claims,
    set_jti,
)
from broker.testing import FakeClock

ISSUER = "https://jit.example.test"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = "0123456789abcdef.00112233445566778899aabbccddeeff"
TXN = "f" * 32
ENDPOINT = "https://rs.example.test/ssf/push"

Handler = Callable[[httpx.Request], httpx.Response]


def receiver(name: str = "rs", **kw: Any) -> SsfReceiverSettings:
    return SsfReceiverSettings(
        name=name, endpoint=kw.pop("endpoint", ENDPOINT), audience=kw.pop("audience", name), **kw
    )


def revocation(lease_id: str = LEASE, trigger: str = "ttl") -> Revocation:
    return Revocation(
        lease_id=lease_id, task_id="build-42", trigger=trigger, revoked_at=T0, issuer="jwt"
    )


def pem(private: Any) -> bytes:
    return bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class Recorder:
    """An httpx transport handler: answers with ``answer(request)`` and records requests."""

    def __init__(self, answer: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer or (lambda _r: httpx.Response(202))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def claims(self) -> list[dict[str, Any]]:
        return [jwt.decode(r.content, options={"verify_signature": False}) for r in self.requests]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def make(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> AsyncIterator[Callable[..., SsfTransmitter]]:
    made: list[SsfTransmitter] = []

    def factory(
        receivers: list[SsfReceiverSettings] | None = None,
        handler: Handler | None = None,
        **kw: Any,
    ) -> SsfTransmitter:
        settings = SsfSettings(receivers=[receiver()] if receivers is None else receivers)
        t = SsfTransmitter(
            settings,
            fake_redis,
            "jit",
            clock,
            issuer_url=kw.pop("issuer_url", ISSUER),
            dev=kw.pop("dev", True),
            transport=httpx.MockTransport(handler or Recorder()),
            rand=lambda: 1.0,
            **kw,
        )
        made.append(t)
        return t

    yield factory
    for t in made:
        await t.aclose()


# -- the SET ------------------------------------------------------------------------------------


def test_the_set_claims_have_the_documented_shape() -> None:
    entry = OutboxEntry(txn=TXN, published_at=1_893_499_201, revocation=revocation())
    claims = set_claims(entry, issuer=ISSUER, receiver="rs", audience="https://rs.example.test")
    subject = {"format": "opaque", "id": LEASE}
    assert claims == {
        "iss": ISSUER,
        "iat": 1_893_499_201,
        "jti": set_jti(TXN, "rs"),
        "aud": "https://rs.example.test",
        "txn": TXN,
        "sub_id": subject,
        "events": {
            SESSION_REVOKED: {
                "subject": subject,
                "event_timestamp": int(T0.timestamp()),
                "initiating_entity": "policy",
                "reason_admin": {
                    "en": f"jit-broker revoked lease {LEASE} of task build-42 (trigger: ttl)"
                },
                "reason_user": {"en": "The credential reached the end of its time to live."},
                CREDENTIAL_MEMBER: {
                    "lease_id": LEASE,
                    "task_id": "build-42",
                    "issuer": "jwt",
                    "trigger": "ttl",
                },
            }
        },
    }
    assert "exp" not in claims


@pytest.mark.parametrize(
    ("trigger", "initiator"),
    [
        ("ttl", "policy"),
        ("task_completed", "user"),
        ("workload", "user"),
        ("mint_timeout", "system"),
        ("approval_remint", "system"),
        ("explicit", None),
        ("anomaly.rule7", None),
    ],
)
def test_the_initiating_entity_is_set_only_for_triggers_whose_initiator_is_known(
    trigger: str, initiator: str | None
) -> None:
    entry = OutboxEntry(txn=TXN, published_at=0, revocation=revocation(trigger=trigger))
    event = set_claims(entry, issuer=ISSUER, receiver="rs", audience="a")["events"][SESSION_REVOKED]
    assert event.get("initiating_entity") == initiator
    assert event[CREDENTIAL_MEMBER]["trigger"] == trigger
    assert event["reason_user"]["en"]


def test_jti_is_stable_per_revocation_and_receiver_and_differs_between_them() -> None:
    assert set_jti(TXN, "a") == set_jti(TXN, "a")
    assert set_jti(TXN, "a") != set_jti(TXN, "b")
    assert set_jti(TXN, "a") != set_jti("e" * 32, "a")
    assert len(set_jti(TXN, "a")) == 32


def test_a_revocation_is_read_from_a_lease_revoked_audit_event() -> None:
    event = AuditEvent(
        type="lease.revoked",
        time=T0,
        principal="dev:alice",
        lease_id=LEASE,
        task_id="build-42",
        issuer="jwt",
        detail={"trigger": "task_completed", "attempts": 1},
    )
    r = Revocation.from_audit(event)
    assert (r.lease_id, r.task_id, r.trigger, r.issuer, r.revoked_at) == (
        LEASE,
        "build-42",
        "task_completed",
        "jwt",
        T0,
    )


@pytest.mark.parametrize(
    "event",
    [
        AuditEvent(type="lease.minted", time=T0, lease_id=LEASE, task_id="t"),
        AuditEvent(type="lease.revoked", time=T0, task_id="t"),
        AuditEvent(type="lease.revoked", time=T0, lease_id=LEASE),
        AuditEvent(type="lease.revoked", time=T0, lease_id="has space", task_id="t"),
        AuditEvent(type="lease.revoked", time=T0, lease_id=LEASE, task_id="x" * 129),
    ],
    ids=["other type", "no lease", "no task", "bad lease id", "task id too long"],
)
def test_anything_but_a_well_formed_lease_revoked_event_is_refused(event: AuditEvent) -> None:
    with pytest.raises(ValueError, match=r"."):
        Revocation.from_audit(event)


# -- the key ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("private", "alg", "kty"),
    [
        (Ed25519PrivateKey.generate(), "EdDSA", "OKP"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256", "EC"),
    ],
    ids=["ed25519", "p256"],
)
def test_a_pem_key_file_signs_sets_that_verify_against_the_jwks(
    tmp_path: Path, private: Any, alg: str, kty: str
) -> None:
    path = tmp_path / "ssf.pem"
    path.write_bytes(pem(private))
    path.chmod(0o600)
    signer = SetSigner.from_settings(str(path), dev=False)
    assert signer.algorithm == alg
    (jwk,) = signer.jwks()["keys"]
    assert (jwk["kty"], jwk["alg"], jwk["use"]) == (kty, alg, "sig")
    assert jwk["kid"] == signer.kid
    assert "d" not in jwk
    token = signer.sign({"iss": ISSUER, "aud": "a", "iat": 1, "jti": "j", "events": {}})
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": signer.kid, "typ": "secevent+jwt"}
    key = jwt.PyJWK(jwk)
    assert jwt.decode(token, key, algorithms=[alg], audience="a")["iss"] == ISSUER
    assert repr(signer) == f"SetSigner(kid={signer.kid!r}, algorithm={alg!r})"


def test_without_a_key_file_only_dev_mode_signs_with_a_generated_key() -> None:
    with pytest.raises(ConfigError, match="signing_key_file is required"):
        SetSigner.from_settings(None, dev=False)
    assert SetSigner.from_settings(None, dev=True).algorithm == "EdDSA"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"not a pem", "not an unencrypted PEM private key"),
        (pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "unsupported key"),
        (pem(ec.generate_private_key(ec.SECP384R1())), "unsupported key"),
    ],
    ids=["missing", "garbage", "rsa", "p384"],
)
def test_a_bad_key_file_stops_start_up_without_showing_its_content(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "ssf.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        SetSigner.from_settings(str(path), dev=False)
    assert "BEGIN" not in str(info.value)


def test_a_key_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ssf.pem"
    path.write_bytes(pem(Ed25519PrivateKey.generate()))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="jit.ssf"):
        SetSigner.from_settings(str(path), dev=False)
    assert "should be 0600" in caplog.text


# -- configuration ------------------------------------------------------------------------------


async def test_the_configuration_document_describes_a_push_transmitter(
    make: Callable[..., SsfTransmitter],
) -> None:
    t = make(issuer_url=ISSUER + "/")
    assert t.configuration() == {
        "spec_version": "1_0",
        "issuer": ISSUER,
        "jwks_uri": ISSUER + JWKS_PATH,
        "delivery_methods_supported": ["urn:ietf:rfc:8935"],
        "default_subjects": "ALL",
        "events_supported": [SESSION_REVOKED],
    }
    assert t.jwks() == t.signer.jwks()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"issuer_url": "http://jit.example.test", "dev": False}, "must use https"),
        ({"issuer_url": "https://jit.example.test/?x=1"}, "must not have a query"),
        ({"issuer_url": "jit.example.test"}, "absolute https"),
        ({"receivers": [receiver(endpoint="http://rs.example.test/push")]}, "must use https"),
        ({"receivers": [receiver(endpoint="https://u:p@rs.example.test/")]}, "credentials"),
        ({"receivers": [receiver(endpoint="https://rs.example.test/#x")]}, "fragment"),
        ({"receivers": [receiver(endpoint="ftp://rs.example.test/")]}, "absolute https"),
        ({"receivers": [receiver("a"), receiver("a")]}, "unique"),
        ({"receivers": [receiver("has space")]}, "name must be"),
        ({"receivers": [receiver(audience=" ")]}, "audience"),
        ({"receivers": [receiver(timeout=timedelta(0))]}, "timeout"),
        ({"receivers": [receiver(token_file="/nonexistent/token")]}, "cannot read"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
async def test_bad_configuration_stops_start_up_with_a_clear_message(
    make: Callable[..., SsfTransmitter], kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make(**kw)


async def test_http_is_accepted_for_loopback_hosts_and_for_a_dev_issuer(
    make: Callable[..., SsfTransmitter], tmp_path: Path
) -> None:
    loopback = [
        receiver("a", endpoint="http://127.0.0.1:9/push"),
        receiver("b", endpoint="http://[::1]:9/"),
        receiver("c", endpoint="http://localhost:9/"),
    ]
    key = tmp_path / "ssf.pem"
    key.write_bytes(pem(Ed25519PrivateKey.generate()))
    key.chmod(0o600)
    settings = SsfSettings(signing_key_file=str(key), receivers=loopback)
    t = SsfTransmitter(
        settings, aioredis.Redis(), "jit", FakeClock(), issuer_url="http://127.0.0.1:8200"
    )
    assert t.issuer == "http://127.0.0.1:8200"
    await t.aclose()
    assert make(issuer_url="http://jit.internal:8200", dev=True).issuer == (
        "http://jit.internal:8200"
    )


@pytest.mark.parametrize("content", ["", "two words", "tab\there"])
async def test_a_bad_token_file_stops_start_up(
    make: Callable[..., SsfTransmitter], tmp_path: Path, content: str
) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigError, match="printable ASCII") as info:
        make(receivers=[receiver(token_file=str(path))])
    if content:
        assert content not in str(info.value)


# -- publish and the sink -----------------------------------------------------------------------


async def test_without_receivers_publish_writes_nothing(
    make: Callable[..., SsfTransmitter], fake_redis: aioredis.Redis
) -> None:
    t = make(receivers=[])
    assert await t.publish(revocation()) is None
    assert await fake_redis.keys("*") == []
    assert await t.run_once() == 0
    assert await t.lag() == {}


async def test_the_sink_publishes_lease_revoked_events_and_ignores_the_rest(
    make: Callable[..., SsfTransmitter], clock: FakeClock
) -> None:
    rec = Recorder()
    t = make(handler=rec)
    audit = AuditLog(clock, [t.sink()])
    await audit.emit("lease.minted", lease_id=LEASE, task_id="build-42", issuer="jwt")
    await audit.emit(
        "lease.revoked",
        principal="dev:alice",
        lease_id=LEASE,
        task_id="build-42",
        issuer="jwt",
        detail={"trigger": "explicit", "attempts": 1},
    )
    await audit.emit("lease.mint_cleaned", lease_id=LEASE, task_id="build-42")
    assert await t.lag() == {"rs": 1}
    assert await t.run_once() == 1
    (claims,) = rec.claims()
    assert claims["sub_id"] == {"format": "opaque", "id": LEASE}
    event = claims["events"][SESSION_REVOKED]
    assert event[CREDENTIAL_MEMBER]["trigger"] == "explicit"
    assert "dev:alice" not in json.dumps(claims)  # the principal is not shared (minimisation)
    await audit.aclose()


# -- receiver answers ---------------------------------------------------------------------------


async def test_a_push_is_one_set_per_post_with_the_rfc8935_headers_and_the_bearer_token(
    make: Callable[..., SsfTransmitter], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t-receiver-token\n")
    rec = Recorder()
    t = make(receivers=[receiver(token_file=str(token))], handler=rec)
    await t.publish(revocation())
    assert await t.run_once() == 1
    (request,) = rec.requests
    assert request.method == "POST"
    assert str(request.url) == ENDPOINT
    assert request.headers["content-type"] == "application/secevent+jwt"
    assert request.headers["accept"] == "application/json"
    assert request.headers["authorization"] == "Bearer s3cr3t-receiver-token"
    assert request.content.count(b".") == 2  # one compact JWS, nothing else


async def test_a_rotated_token_file_is_used_without_a_restart(
    make: Callable[..., SsfTransmitter], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("first-token")
    rec = Recorder()
    t = make(receivers=[receiver(token_file=str(token))], handler=rec)
    await t.publish(revocation())
    await t.run_once()
    token.write_text("second-token-longer")
    await t.publish(revocation())
    await t.run_once()
    assert [r.headers["authorization"] for r in rec.requests] == [
        "Bearer first-token",
        "Bearer second-token-longer",
    ]


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(200), "HTTP 200 (RFC 8935 acknowledges with 202 Accepted only)"),
        (httpx.Response(204), "HTTP 204 (RFC 8935 acknowledges with 202 Accepted only)"),
        (httpx.Response(302, headers={"Location": "https://evil.test/"}), "HTTP 302"),
        (httpx.Response(401), "HTTP 401"),
        (httpx.Response(503), "HTTP 503"),
        (
            httpx.Response(400, json={"err": "invalid_audience", "description": "bad aud"}),
            "HTTP 400 invalid_audience",
        ),
        (httpx.Response(400, json={"err": "made_up"}), "HTTP 400 other"),
        (httpx.Response(400, content=b"<html>nope</html>"), "HTTP 400"),
    ],
)
async def test_only_202_acknowledges_and_every_other_answer_is_retried(
    make: Callable[..., SsfTransmitter], response: httpx.Response, error: str
) -> None:
    rec = Recorder(lambda _r: response)
    t = make(handler=rec)
    await t.publish(revocation())
    assert await t.run_once() == 0
    status = (await t.status())["rs"]
    assert (status.lag, status.attempts, status.last_error) == (1, 1, error)
    assert len(rec.requests) == 1  # redirects are not followed (the token stays here)


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), OSError("reset")]
)
async def test_a_transport_failure_is_retried_and_named_by_its_class_only(
    make: Callable[..., SsfTransmitter], exc: Exception
) -> None:
    def boom(_r: httpx.Request) -> httpx.Response:
        raise exc

    t = make(handler=boom)
    await t.publish(revocation())
    assert await t.run_once() == 0
    assert (await t.status())["rs"].last_error == type(exc).__name__


async def test_a_retry_waits_for_the_backoff_then_sends_the_same_set(
    make: Callable[..., SsfTransmitter], clock: FakeClock
) -> None:
    answers = iter([503, 503, 202])
    rec = Recorder(lambda _r: httpx.Response(next(answers)))
    t = make(handler=rec, backoff_base=timedelta(seconds=2))
    await t.publish(revocation())
    assert await t.run_once() == 0
    assert await t.run_once() == 0  # backing off: the receiver is not called
    assert len(rec.requests) == 1
    status = (await t.status())["rs"]
    assert status.next_attempt_ms == int((T0 + timedelta(seconds=2)).timestamp() * 1000)
    clock.advance(timedelta(seconds=2))
    assert await t.run_once() == 0
    clock.advance(timedelta(seconds=3))
    assert await t.run_once() == 0  # 2nd backoff is 4s (rand=1.0): not yet
    clock.advance(timedelta(seconds=1))
    assert await t.run_once() == 1
    assert len(rec.requests) == 3
    assert len({r.content for r in rec.requests}) == 1  # byte-identical SET (Ed25519)
    assert (await t.status())["rs"].attempts == 0


async def test_failures_are_logged_and_audited_at_powers_of_two_only(
    make: Callable[..., SsfTransmitter], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder(
        lambda _r: httpx.Response(400, json={"err": "invalid_key", "description": "who\nare you"})
    )
    memory = MemorySink()
    t = make(handler=rec, audit=AuditLog(clock, [memory]), backoff_cap=timedelta(seconds=1))
    await t.publish(revocation())
    with caplog.at_level(logging.WARNING, logger="jit.ssf"):
        for _ in range(10):
            await t.run_once()
            clock.advance(timedelta(seconds=1))
    assert len(rec.requests) == 10
    warnings = [r.getMessage() for r in caplog.records if "pushing a SET" in r.getMessage()]
    assert len(warnings) == 4  # attempts 1, 2, 4, 8
    assert "HTTP 400 invalid_key (who?are you)" in warnings[0]
    failed = [e for e in memory.events if e.type == "ssf.delivery_failed"]
    assert [e.detail["attempts"] for e in failed] == [1, 2, 4, 8]
    first = failed[0]
    assert (first.lease_id, first.task_id, first.outcome) == (LEASE, "build-42", "error")
    assert first.detail == {
        "receiver": "rs",
        "attempts": 1,
        "retry_in_ms": 1000,
        "status": 400,
        "err": "invalid_key",
    }


async def test_a_failing_receiver_does_not_hold_back_another(
    make: Callable[..., SsfTransmitter],
) -> None:
    rec = Recorder(lambda r: httpx.Response(503 if r.url.host == "down.example.test" else 202))
    t = make(
        receivers=[receiver("up"), receiver("down", endpoint="https://down.example.test/")],
        handler=rec,
    )
    for i in range(3):
        await t.publish(revocation(f"0123456789abcdef.{i:032x}"))
    assert await t.run_once() == 3
    assert await t.lag() == {"up": 0, "down": 3}


async def test_a_receiver_configured_later_starts_at_the_end_of_the_outbox(
    make: Callable[..., SsfTransmitter],
) -> None:
    first = make(receivers=[receiver("a")])
    await first.publish(revocation())
    await first.run_once()
    rec = Recorder()
    second = make(receivers=[receiver("a"), receiver("b")], handler=rec)
    assert await second.lag() == {"a": 0, "b": 0}
    await second.run_once()
    assert rec.requests == []
    await second.publish(revocation("0123456789abcdef." + "1" * 32))
    assert await second.run_once() == 2
    assert {r["aud"] for r in rec.claims()} == {"a", "b"}


async def test_an_entry_that_cannot_be_decoded_is_skipped_with_an_error(
    make: Callable[..., SsfTransmitter],
    fake_redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    t = make(handler=rec)
    await t.register()
    await fake_redis.incr(t.outbox.keys.head)
    await fake_redis.xadd(t.outbox.keys.outbox, {"s": "1", "e": '{"txn": "nope"}'})
    await t.publish(revocation())
    with caplog.at_level(logging.ERROR, logger="jit.ssf"):
        assert await t.run_once() == 2
    assert "cannot be decoded; skipped" in caplog.text
    assert [c["sub_id"]["id"] for c in rec.claims()] == [LEASE]


# -- Redis outages ------------------------------------------------------------------------------


@pytest.fixture
def dead_redis() -> aioredis.Redis:
    """A client for a port nothing listens on: every command fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return aioredis.Redis(
        host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1
    )


async def test_a_redis_outage_fails_the_round_once_not_once_per_receiver(
    dead_redis: aioredis.Redis, clock: FakeClock
) -> None:
    settings = SsfSettings(receivers=[receiver("a"), receiver("b")])
    t = SsfTransmitter(settings, dead_redis, "jit", clock, issuer_url=ISSUER, dev=True)
    with pytest.raises(redis_exceptions.ConnectionError):
        await t.run_once()
    with pytest.raises(redis_exceptions.ConnectionError):
        await t.lag()
    await t.aclose()
    await dead_redis.aclose()


async def test_when_redis_refuses_a_revocation_the_sink_says_which_and_emit_goes_on(
    dead_redis: aioredis.Redis, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    t = SsfTransmitter(
        SsfSettings(receivers=[receiver()]), dead_redis, "jit", clock, issuer_url=ISSUER, dev=True
    )
    audit = AuditLog(clock, [t.sink()])
    with caplog.at_level(logging.ERROR):
        event = await audit.emit(
            "lease.revoked", lease_id=LEASE, task_id="build-42", detail={"trigger": "ttl"}
        )
    assert event.type == "lease.revoked"
    assert f"revocation of lease {LEASE} could not be queued" in caplog.text
    await t.aclose()
    await dead_redis.aclose()


async def test_the_sink_reports_a_malformed_revocation_and_goes_on(
    make: Callable[..., SsfTransmitter], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    t = make()
    sink = t.sink()
    bad = AuditEvent(type="lease.revoked", time=T0, lease_id="bad id", task_id="t")
    good = AuditEvent(type="lease.revoked", time=T0, lease_id=LEASE, task_id="t")
    with caplog.at_level(logging.ERROR, logger="jit.ssf"):
        await sink.write([bad, good])
    assert "lease.revoked event for lease bad id cannot be pushed" in caplog.text
    assert await t.lag() == {"rs": 1}

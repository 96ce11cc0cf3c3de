"""broker.audit.chain and the AuditLog seam: records linked by hash from the genesis, one chain
for many writers, signed checkpoints by count and by time on the injected clock, keyed HMACs,
fail-closed keys. Redis is fakeredis here; tests/integration/test_audit_redis.py uses the real
one with two clients."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from broker.audit import (
    CHECKPOINT,
    GENESIS,
    AuditChain,
    AuditEvent,
    AuditLog,
    CheckpointSigner,
    HmacKey,
    MemorySink,
    build_audit,
    read_chain,
    record_hash,
)
from broker.audit.signing import (
    parse_verification_keys,
    verify_checkpoint,
    write_private_key,
)
from broker.config import AuditSettings
from broker.errors import ConfigError, StoreUnavailable
from broker.testing import FakeClock
from broker.types import Secret

PREFIX = "audit-unit"


def make_log(
    redis: aioredis.Redis,
    clock: FakeClock,
    *,
    signer: CheckpointSigner | None = None,
    every: int = 1000,
    interval: timedelta = timedelta(minutes=1),
    sinks: list[Any] | None = None,
    prefix: str = PREFIX,
) -> AuditLog:
    chain = AuditChain(
        redis,
        prefix,
        clock,
        signer or CheckpointSigner.generate(),
        checkpoint_every=every,
        checkpoint_interval=interval,
    )
    return AuditLog(clock, sinks or [], chain=chain)


async def exported(redis: aioredis.Redis, prefix: str = PREFIX) -> list[dict[str, Any]]:
    return [msgspec.json.decode(r.data) async for r in read_chain(redis, prefix)]


def assert_linked(records: list[dict[str, Any]]) -> None:
    prev = GENESIS
    for n, rec in enumerate(records, start=1):
        assert rec["seq"] == n
        assert rec["prev"] == prev
        assert record_hash(rec) == rec["hash"]
        prev = rec["hash"]


# -- the chain ---------------------------------------------------------------------------


async def test_each_record_carries_seq_prev_and_its_own_hash_linked_from_the_genesis(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    log = make_log(fake_redis, clock)
    first = await log.emit("decision", principal="dev:ci", detail={"resource": "r"})
    second = await log.emit("lease.minted", lease_id="l1")
    assert (first.seq, first.prev) == (1, GENESIS)
    assert (second.seq, second.prev) == (2, first.hash)
    records = await exported(fake_redis)
    assert_linked(records)
    assert [r["type"] for r in records] == ["decision", "lease.minted"]
    # The stored record is the struct's canonical encoding, so the hash is over what is read.
    assert records[0]["hash"] == first.hash == record_hash(first)
    assert await log.chain.head() == (2, second.hash)  # type: ignore[union-attr]


async def test_the_stream_entry_id_is_derived_from_seq(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    log = make_log(fake_redis, clock)
    for i in range(3):
        await log.emit("x", detail={"i": i})
    entries = await fake_redis.xrange(f"{PREFIX}:{{audit}}:stream")
    assert entries is not None
    assert [e[0] for e in entries] == [b"1-0", b"2-0", b"3-0"]


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.lists(st.text(), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(
    detail=st.dictionaries(st.text(min_size=1, max_size=8), _values, max_size=6),
    reasons=st.lists(st.text(), max_size=3),
    principal=st.one_of(st.none(), st.text()),
)
def test_the_hash_of_the_struct_equals_the_hash_of_its_decoded_json(
    detail: dict[str, Any], reasons: list[str], principal: str | None
) -> None:
    """What the broker hashes (the struct) and what a verifier hashes (the JSON it reads)
    are the same bytes, whatever the fields hold."""
    clock = FakeClock()
    event = AuditEvent(
        type="t",
        time=clock.now(),
        detail=detail,
        reasons=reasons,
        principal=principal,
        seq=7,
        prev=GENESIS,
    )
    digest = record_hash(event)
    stored = msgspec.json.Encoder(order="sorted").encode(
        msgspec.structs.replace(event, hash=digest)
    )
    assert record_hash(msgspec.json.decode(stored)) == digest


async def test_two_writers_on_one_prefix_make_one_chain_without_forks(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    signer = CheckpointSigner.generate()
    a = make_log(fake_redis, clock, signer=signer, every=25)
    b = make_log(fake_redis, clock, signer=signer, every=25)
    await asyncio.gather(
        *(
            log.emit("e", detail={"w": name, "i": i})
            for i in range(60)
            for name, log in (("a", a), ("b", b))
        )
    )
    records = await exported(fake_redis)
    assert_linked(records)
    events = [r for r in records if r["type"] == "e"]
    assert sorted((r["detail"]["w"], r["detail"]["i"]) for r in events) == sorted(
        (w, i) for i in range(60) for w in "ab"
    )
    assert a.chain.conflicts + b.chain.conflicts >= 1  # type: ignore[union-attr]


async def test_a_writer_with_a_stale_head_retries_on_top_of_the_other(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    a = make_log(fake_redis, clock)
    b = make_log(fake_redis, clock)
    await a.emit("one")
    await b.emit("two")
    await a.emit("three")  # a's cached head is seq 1: the CAS fails once, then succeeds
    assert a.chain.conflicts == 1  # type: ignore[union-attr]
    assert [r["type"] for r in await exported(fake_redis)] == ["one", "two", "three"]
    assert_linked(await exported(fake_redis))


async def test_a_lost_head_is_recovered_from_the_stream_and_the_chain_does_not_fork(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    log = make_log(fake_redis, clock)
    for i in range(4):
        await log.emit("e", detail={"i": i})
    await fake_redis.delete(f"{PREFIX}:{{audit}}:head")  # evicted, or deleted by hand
    fresh = make_log(fake_redis, clock)
    record = await fresh.emit("after")
    assert record.seq == 5
    assert_linked(await exported(fake_redis))


async def test_in_process_sinks_get_the_chained_records_and_checkpoints(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    mem = MemorySink()
    log = make_log(fake_redis, clock, every=2, sinks=[mem])
    for i in range(4):
        await log.emit("e", detail={"i": i})
    assert [(e.type, e.seq) for e in mem.events] == [
        ("e", 1),
        ("e", 2),
        (CHECKPOINT, 3),
        ("e", 4),
        ("e", 5),
        (CHECKPOINT, 6),
    ]
    assert all(e.hash for e in mem.events)


async def test_a_caller_cancelled_while_emitting_does_not_break_the_chain(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    log = make_log(fake_redis, clock)
    task = asyncio.create_task(log.emit("cancelled"))
    await asyncio.sleep(0)  # let it queue its event
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await log.emit("next")
    await log.aclose()
    records = await exported(fake_redis)
    assert_linked(records)
    assert [r["type"] for r in records] == ["cancelled", "next"]


# -- checkpoints --------------------------------------------------------------------------


async def test_a_checkpoint_follows_every_n_records_and_signs_the_seq_and_hash_before_it(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    signer = CheckpointSigner.generate()
    log = make_log(fake_redis, clock, signer=signer, every=5)
    for i in range(12):
        await log.emit("e", detail={"i": i})
    records = await exported(fake_redis)
    assert_linked(records)
    checkpoints = [r for r in records if r["type"] == CHECKPOINT]
    assert [c["seq"] for c in checkpoints] == [6, 12]
    keys = parse_verification_keys(json.dumps(signer.jwks()).encode())
    for c in checkpoints:
        assert verify_checkpoint(c["detail"]["jws"], keys) == (c["seq"] - 1, c["prev"])
        assert c["detail"]["kid"] == signer.kid


async def test_a_checkpoint_follows_when_the_interval_passed_on_the_injected_clock(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    log = make_log(fake_redis, clock, every=1000, interval=timedelta(seconds=60))
    await log.emit("first")
    clock.advance(59)
    await log.emit("second")
    clock.advance(1)
    await log.emit("third")
    types = [r["type"] for r in await exported(fake_redis)]
    assert types == ["first", "second", "third", CHECKPOINT]


async def test_a_quiet_chain_gets_its_tail_signed_once_and_not_again(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    log = make_log(fake_redis, clock, interval=timedelta(seconds=60))
    assert log.chain is not None
    await log.emit("lonely")
    assert await log.chain.checkpoint_if_due() is None  # not yet
    clock.advance(61)
    cp = await log.chain.checkpoint_if_due()
    assert cp is not None
    assert (cp.type, cp.seq) == (CHECKPOINT, 2)
    clock.advance(3600)
    assert await log.chain.checkpoint_if_due() is None  # nothing new to sign


async def test_two_writers_never_write_two_checkpoints_for_the_same_stretch(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    signer = CheckpointSigner.generate()
    a = make_log(fake_redis, clock, signer=signer, interval=timedelta(seconds=10))
    b = make_log(fake_redis, clock, signer=signer, interval=timedelta(seconds=10))
    await a.emit("x")
    await b.emit("y")
    clock.advance(11)
    assert a.chain is not None
    assert b.chain is not None
    await asyncio.gather(a.chain.checkpoint_if_due(), b.chain.checkpoint_if_due())
    types = [r["type"] for r in await exported(fake_redis)]
    assert types == ["x", "y", CHECKPOINT]


# -- the seam -----------------------------------------------------------------------------


async def test_an_audit_log_without_a_chain_still_works_for_unit_tests(clock: FakeClock) -> None:
    mem = MemorySink()
    log = AuditLog(clock, [mem])
    event = await log.emit("lease.minted", lease_id="l1")
    assert mem.events == [event]
    assert (event.seq, event.prev, event.hash) == (None, None, None)
    assert log.jwks() == {"keys": []}
    assert await log.sink_lag() == {}


@pytest.mark.parametrize(
    ("type_", "fields", "error"),
    [
        ("x", {"seq": 5}, TypeError),
        ("x", {"hash": "0" * 64}, TypeError),
        ("x", {"time": "now"}, TypeError),
        (CHECKPOINT, {}, ValueError),
        ("x", {"detail": {"token": Secret("s3cret")}}, msgspec.ValidationError),
    ],
)
async def test_emit_refuses_fields_it_sets_itself_checkpoints_and_secrets(
    clock: FakeClock, type_: str, fields: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await AuditLog(clock).emit(type_, **fields)


async def test_when_redis_is_down_emit_raises_and_the_log_still_gets_the_event(
    clock: FakeClock,
) -> None:
    # Nothing listens on port 1; no retries, so the refusal is immediate.
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    mem = MemorySink()
    log = make_log(dead, clock, sinks=[mem])
    with pytest.raises(StoreUnavailable, match="Redis unavailable"):
        await log.emit("decision")
    assert [e.type for e in mem.events] == ["decision"]
    assert mem.events[0].seq is None
    await dead.aclose()


# -- hmac ---------------------------------------------------------------------------------


def test_hmac_is_a_keyed_sha256_digest_that_matches_only_under_its_key(tmp_path: Path) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_text("k" * 40 + "\n")
    key = HmacKey.from_file(key_file)
    log = AuditLog(FakeClock(), hmac_key=key)
    digest = log.hmac("eyJhbGciOi.token.value")
    expected = hmac.new(b"k" * 40, b"eyJhbGciOi.token.value", hashlib.sha256).hexdigest()
    assert digest == f"hmac-sha256:{expected}"
    assert log.hmac("eyJhbGciOi.token.value") == digest  # deterministic: records can be matched
    assert log.hmac_matches("eyJhbGciOi.token.value", digest)
    assert not log.hmac_matches("another", digest)
    assert AuditLog(FakeClock()).hmac("eyJhbGciOi.token.value") != digest  # other key
    assert "k" * 10 not in repr(key)


def test_a_short_hmac_key_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("tooshort")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        HmacKey.from_file(short)


# -- keys ---------------------------------------------------------------------------------


def test_the_signing_key_loads_from_an_ed25519_pem_and_publishes_only_its_public_half(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.pem"
    kid = write_private_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    signer = CheckpointSigner.from_file(path)
    assert signer.kid == kid
    (jwk,) = signer.jwks()["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assert "d" not in jwk
    assert repr(signer) == f"CheckpointSigner(kid={kid!r})"
    with pytest.raises(FileExistsError):
        write_private_key(path)  # never overwrites a key


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key at all", "not an unencrypted PEM private key"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "must be an Ed25519 key",
        ),
    ],
)
def test_a_signing_key_that_is_not_ed25519_stops_start_up(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        CheckpointSigner.from_file(path)
    assert "PRIVATE" not in info.value.message


def test_a_group_readable_key_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.pem"
    write_private_key(path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="jit.audit"):
        CheckpointSigner.from_file(path)
    assert "chmod 600" in caplog.text


async def test_outside_dev_mode_the_audit_keys_are_required(
    fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="signing_key_file is required"):
        build_audit(AuditSettings(), clock=clock, redis=fake_redis, key_prefix=PREFIX)
    key = tmp_path / "audit.pem"
    write_private_key(key)
    with pytest.raises(ConfigError, match="hmac_key_file is required"):
        build_audit(
            AuditSettings(signing_key_file=str(key)),
            clock=clock,
            redis=fake_redis,
            key_prefix=PREFIX,
        )
    missing = AuditSettings(signing_key_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="file not found"):
        build_audit(missing, clock=clock, redis=fake_redis, key_prefix=PREFIX)


async def test_dev_mode_generates_the_keys_and_chains_events(
    fake_redis: aioredis.Redis, clock: FakeClock
) -> None:
    log = build_audit(AuditSettings(), clock=clock, redis=fake_redis, key_prefix=PREFIX, dev=True)
    record = await log.emit("broker.started")
    assert record.seq == 1
    assert log.jwks()["keys"][0]["kty"] == "OKP"
    assert log.hmac("x").startswith("hmac-sha256:")
    await log.aclose()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (AuditSettings(checkpoint_every=0), "checkpoint_every"),
        (AuditSettings(checkpoint_interval=timedelta(0)), "checkpoint_interval"),
        (AuditSettings(stream_maxlen=10), "stream_maxlen"),
    ],
)
async def test_nonsense_chain_settings_are_refused(
    fake_redis: aioredis.Redis, clock: FakeClock, settings: AuditSettings, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_audit(settings, clock=clock, redis=fake_redis, key_prefix=PREFIX, dev=True)

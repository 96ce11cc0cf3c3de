"""`jit audit verify`: an exported chain is intact, or the first altered, removed, reordered or
inserted record is named by line and seq; forged checkpoint signatures are refused.

The chain files are written by the real AuditChain (fakeredis) and read back from the stream
the way `jit audit export` does; the CLI is driven with click's CliRunner."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws

from broker.audit import CHECKPOINT, GENESIS, AuditEvent, CheckpointSigner, read_chain, record_hash
from broker.audit.chain import canonical
from broker.audit.signing import _REGISTRY as SIGNING_REGISTRY
from broker.audit.signing import CheckpointError, parse_verification_keys, verify_checkpoint
from broker.audit.verify import verify_lines
from broker.cli.audit import audit
from broker.testing import FakeClock
from tests.unit.test_audit_chain import PREFIX, make_log

N = 30  # records emitted; checkpoints every 10 → seq 11, 22, 33 are checkpoints


@dataclass
class Chain:
    path: Path
    jwks: Path
    signer: CheckpointSigner
    lines: list[bytes]

    def records(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for line in self.lines]

    def write(self, lines: list[bytes]) -> Path:
        self.path.write_bytes(b"".join(line + b"\n" for line in lines))
        return self.path


@pytest.fixture
async def chain(fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path) -> Chain:
    signer = CheckpointSigner.generate()
    log = make_log(fake_redis, clock, signer=signer, every=10)
    for i in range(N):
        await log.emit(
            "lease.minted" if i % 3 else "decision",
            principal=f"dev:ci-{i % 4}",
            lease_id=f"lease-{i}",
            detail={"i": i, "resource": "https://demo.local", "actions": ["read"]},
        )
        clock.advance(1)
    lines = [r.data async for r in read_chain(fake_redis, PREFIX)]
    jwks = tmp_path / "audit.jwks.json"
    jwks.write_text(json.dumps(signer.jwks()))
    c = Chain(tmp_path / "chain.jsonl", jwks, signer, lines)
    c.write(lines)
    return c


def run(*args: str) -> Result:
    return CliRunner().invoke(audit, list(args), catch_exceptions=False)


def verify(c: Chain, *extra: str) -> Result:
    return run("verify", str(c.path), "--key", str(c.jwks), *extra)


def problem(result: Result) -> dict[str, Any]:
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False
    p: dict[str, Any] = report["problem"]
    return p


def rehash(record: dict[str, Any]) -> bytes:
    record["hash"] = record_hash(record)
    return canonical(record)


# -- clean -------------------------------------------------------------------------------


def test_a_clean_chain_verifies_with_its_checkpoints(chain: Chain) -> None:
    result = verify(chain)
    assert result.exit_code == 0, result.output
    assert "OK: 33 records, seq 1..33, 3 checkpoints" in result.output
    assert "signed up to seq 32" in result.output
    report = json.loads(verify(chain, "--json").output)
    assert report["ok"] is True
    assert report["last_signed_seq"] == 32
    assert report["unsigned_tail"] == 0


def test_without_a_key_the_signatures_are_not_checked_and_it_says_so(chain: Chain) -> None:
    result = run("verify", str(chain.path))
    assert result.exit_code == 0
    assert "NOT checked" in result.output


@pytest.mark.parametrize("form", ["private-pem", "public-pem", "jwk"])
def test_the_key_may_be_a_pem_or_a_single_jwk(chain: Chain, tmp_path: Path, form: str) -> None:
    private = chain.signer._private  # the test reaches in for the raw key on purpose
    raw = serialization.load_pem_private_key(private.as_pem(private=True), password=None)
    key = tmp_path / "key"
    if form == "private-pem":
        key.write_bytes(private.as_pem(private=True))
    elif form == "public-pem":
        key.write_bytes(
            raw.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    else:
        key.write_text(json.dumps(chain.signer.public_jwk))
    result = run("verify", str(chain.path), "--key", str(key))
    assert result.exit_code == 0, result.output


# -- tampering: each names the exact record -------------------------------------------------


def test_an_altered_record_is_named(chain: Chain) -> None:
    lines = list(chain.lines)
    lines[6] = lines[6].replace(b"dev:ci-2", b"dev:ci-9")  # seq 7
    chain.write(lines)
    result = verify(chain)
    assert result.exit_code == 1
    assert "FAIL [altered] line 7, seq 7" in result.output
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"], p["seq"]) == ("altered", 7, 7)


def test_an_altered_record_whose_hash_was_recomputed_is_still_named(chain: Chain) -> None:
    records = chain.records()
    records[6]["detail"]["resource"] = "https://evil.local"
    lines = list(chain.lines)
    lines[6] = rehash(records[6])
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"], p["seq"]) == ("altered", 7, 7)
    assert "hash recomputed" in p["message"]


def test_a_removed_record_is_named(chain: Chain) -> None:
    lines = list(chain.lines)
    del lines[6]  # seq 7
    chain.write(lines)
    result = verify(chain)
    assert "FAIL [removed] line 7, seq 7: seq 7 missing" in result.output
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"], p["seq"]) == ("removed", 7, 7)


def test_removed_records_in_a_row_are_named_as_a_range(chain: Chain) -> None:
    lines = list(chain.lines)
    del lines[4:7]  # seq 5, 6, 7
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["seq"]) == ("removed", 5)
    assert "seq 5..7 missing" in p["message"]


def test_a_removed_first_record_is_named_unless_the_file_is_partial(chain: Chain) -> None:
    chain.write(chain.lines[1:])
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"], p["seq"]) == ("removed", 1, 1)
    assert verify(chain, "--partial").exit_code == 0


def test_reordered_records_are_named(chain: Chain) -> None:
    lines = list(chain.lines)
    lines[6], lines[7] = lines[7], lines[6]  # seq 8 now before seq 7
    chain.write(lines)
    result = verify(chain)
    assert "FAIL [reordered] line 7, seq 8" in result.output
    assert "seq 7, which is at line 8" in result.output


def test_a_record_moved_far_away_is_named(chain: Chain) -> None:
    lines = list(chain.lines)
    moved = lines.pop(3)  # seq 4 goes to the end
    lines.append(moved)
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"]) == ("reordered", 4)
    assert "seq 4, which is at line 33" in p["message"]


def test_a_forged_record_inserted_with_a_valid_hash_is_named(chain: Chain) -> None:
    records = chain.records()
    forged = {
        "type": "lease.revoked",
        "time": records[6]["time"],
        "lease_id": "lease-6",
        "detail": {"trigger": "explicit"},
        "seq": 8,
        "prev": records[6]["hash"],
    }
    lines = list(chain.lines)
    lines.insert(7, rehash(forged))  # line 8: claims seq 8, links to seq 7
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"], p["seq"]) == ("inserted", 8, 8)
    assert "the chain continues from it" in p["message"]


def test_a_forged_record_inserted_after_the_genuine_one_is_named(chain: Chain) -> None:
    records = chain.records()
    forged = dict(records[7], detail={"i": 999})
    lines = list(chain.lines)
    lines.insert(8, rehash(forged))  # line 9 also claims seq 8
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"], p["seq"]) == ("inserted", 9, 8)


def test_a_copied_record_is_named(chain: Chain) -> None:
    lines = list(chain.lines)
    lines.insert(20, lines[2])  # seq 3 replayed at line 21
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"], p["seq"]) == ("inserted", 21, 3)
    assert "copy of line 3" in p["message"]


def test_a_line_that_is_not_a_record_is_named(chain: Chain) -> None:
    lines = list(chain.lines)
    lines.insert(4, b'{"type": "note", "text": "hello"}')
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"]) == ("malformed", 5)
    lines[4] = b"{not json"
    chain.write(lines)
    assert problem(verify(chain, "--json"))["kind"] == "malformed"


def test_an_empty_file_fails(chain: Chain) -> None:
    chain.path.write_bytes(b"")
    assert problem(verify(chain, "--json"))["kind"] == "empty"


def test_a_missing_file_fails_with_a_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(audit, ["verify", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1
    assert "cannot read" in result.output


# -- checkpoints --------------------------------------------------------------------------


def _checkpoint_index(c: Chain) -> int:
    return next(i for i, r in enumerate(c.records()) if r["type"] == CHECKPOINT)


def test_a_checkpoint_signed_by_another_key_is_reported(chain: Chain) -> None:
    i = _checkpoint_index(chain)
    records = chain.records()
    cp = records[i]
    forger = CheckpointSigner.generate()
    cp["detail"] = {"jws": forger.sign(cp["seq"] - 1, cp["prev"]), "kid": forger.kid}
    lines = list(chain.lines)
    lines[i] = rehash(cp)
    lines[i + 1] = rehash(dict(records[i + 1], prev=cp["hash"]))
    # ...and the attacker re-links the rest of the file too
    prev = cp["hash"]
    prev = msgspec.json.decode(lines[i + 1])["hash"]
    for j in range(i + 2, len(lines)):
        rec = msgspec.json.decode(lines[j])
        rec["prev"] = prev
        lines[j] = rehash(rec)
        prev = rec["hash"]
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"], p["seq"]) == ("bad-signature", i + 1, 11)
    assert "unknown key" in p["message"]


def test_a_checkpoint_with_a_tampered_signature_is_reported(chain: Chain) -> None:
    i = _checkpoint_index(chain)
    records = chain.records()
    cp = records[i]
    header, payload, sig = cp["detail"]["jws"].split(".")
    flipped = base64.urlsafe_b64encode(
        bytes([base64.urlsafe_b64decode(sig + "==")[0] ^ 1])
        + base64.urlsafe_b64decode(sig + "==")[1:]
    )
    cp["detail"]["jws"] = f"{header}.{payload}.{flipped.decode().rstrip('=')}"
    lines = list(chain.lines)
    lines[i] = rehash(cp)
    lines[i + 1] = rehash(dict(records[i + 1], prev=cp["hash"]))
    chain.write(lines[: i + 2])
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"]) == ("bad-signature", i + 1)
    assert "does not verify" in p["message"]


def test_a_checkpoint_record_without_its_signature_is_reported(chain: Chain) -> None:
    i = _checkpoint_index(chain)
    records = chain.records()
    cp = records[i]
    del cp["detail"]["jws"]
    lines = list(chain.lines)
    lines[i] = rehash(cp)
    lines[i + 1] = rehash(dict(records[i + 1], prev=cp["hash"]))
    chain.write(lines[: i + 2])
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"]) == ("bad-signature", i + 1)
    assert "checkpoint without JWS" in p["message"]


def _signed(signer: CheckpointSigner, payload: bytes, **header: Any) -> str:
    """A JWS by the checkpoint key over any payload, with any header (what a buggy or hostile
    signer could write)."""
    protected = {"alg": "EdDSA", "kid": signer.kid, "typ": "jit-audit-checkpoint", **header}
    return jws.serialize_compact(protected, payload, signer._private, registry=SIGNING_REGISTRY)


MALFORMED_CHECKPOINTS: list[tuple[str, Callable[[CheckpointSigner], Any], str]] = [
    ("two parts", lambda s: "a.b", "not a compact JWS"),
    ("not a string", lambda s: 42, "not a compact JWS"),
    ("three parts of garbage", lambda s: "!!.??.##", "checkpoint signature"),
    ("another typ", lambda s: _signed(s, b'{"head":"h","seq":1}', typ="JWT"), "wrong JWS typ"),
    ("an unknown kid", lambda s: _signed(s, b'{"head":"h","seq":1}', kid="k"), "unknown key"),
    ("a payload that is not JSON", lambda s: _signed(s, b"seq=1"), "not JSON"),
    ("a JSON list", lambda s: _signed(s, b"[1, 2]"), "not {seq, head}"),
    ("an extra field", lambda s: _signed(s, b'{"head":"h","seq":1,"x":0}'), "not {seq, head}"),
    ("a missing field", lambda s: _signed(s, b'{"seq":1}'), "not {seq, head}"),
    ("a boolean seq", lambda s: _signed(s, b'{"head":"h","seq":true}'), "{seq: int, head: str}"),
    ("a string seq", lambda s: _signed(s, b'{"head":"h","seq":"1"}'), "{seq: int, head: str}"),
    ("a numeric head", lambda s: _signed(s, b'{"head":7,"seq":1}'), "{seq: int, head: str}"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [pytest.param(m, r, id=i) for i, m, r in MALFORMED_CHECKPOINTS]
)
def test_a_malformed_checkpoint_is_refused_with_its_reason(
    make: Callable[[CheckpointSigner], Any], reason: str
) -> None:
    signer = CheckpointSigner.generate()
    keys = parse_verification_keys(json.dumps(signer.jwks()).encode())
    assert verify_checkpoint(signer.sign(1, "h"), keys) == (1, "h")  # the key itself works
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint(make(signer), keys)
    message = str(info.value)
    if reason == "checkpoint signature":
        assert message.startswith(("the signature does not verify", "not a valid JWS"))
    else:
        assert reason in message


def test_a_wrong_key_rejects_every_checkpoint(chain: Chain, tmp_path: Path) -> None:
    other = tmp_path / "other.jwks"
    other.write_text(json.dumps(CheckpointSigner.generate().jwks()))
    result = run("verify", str(chain.path), "--key", str(other), "--json")
    p = problem(result)
    assert (p["kind"], p["seq"]) == ("bad-signature", 11)


def test_rewriting_history_with_recomputed_hashes_is_caught_by_the_next_checkpoint(
    chain: Chain,
) -> None:
    """An attacker edits seq 3 and re-links everything after it: every hash checks, but the
    checkpoint at seq 11 signed the old head of seq 10."""
    records = chain.records()
    records[2]["detail"]["resource"] = "https://evil.local"
    prev = records[1]["hash"]
    lines = list(chain.lines[:2])
    for rec in records[2:]:
        rec["prev"] = prev
        lines.append(rehash(rec))
        prev = rec["hash"]
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["seq"]) == ("checkpoint-mismatch", 11)
    assert "records before it were rewritten" in p["message"]
    # Even without the key, a rewrite that kept the old JWS does not match it.
    result = run("verify", str(chain.path), "--json")
    assert problem(result)["kind"] == "checkpoint-mismatch"


def test_a_fake_checkpoint_record_from_a_caller_could_not_pass(chain: Chain) -> None:
    """A checkpoint without a JWS (e.g. forged by hand) is refused."""
    records = chain.records()
    records[4]["type"] = CHECKPOINT
    lines = list(chain.lines)
    lines[4] = rehash(records[4])
    prev = records[4]["hash"]
    for j in range(5, len(lines)):
        rec = msgspec.json.decode(lines[j])
        rec["prev"] = prev
        lines[j] = rehash(rec)
        prev = rec["hash"]
    chain.write(lines)
    p = problem(verify(chain, "--json"))
    assert (p["kind"], p["line"]) == ("bad-signature", 5)


def test_the_unsigned_tail_is_reported(chain: Chain) -> None:
    extra = chain.records()[-1]
    more = {"type": "late", "time": extra["time"], "seq": 34, "prev": extra["hash"]}
    chain.write([*chain.lines, rehash(more)])
    result = verify(chain)
    assert result.exit_code == 0
    assert "1 records after the last checkpoint are not covered" in result.output


# -- property: any single tampering is found at the right place ---------------------------


def build(n: int, signer: CheckpointSigner, every: int) -> list[bytes]:
    """A chain built by hand the way AuditChain builds it (no Redis, for Hypothesis)."""
    clock = FakeClock()
    out: list[bytes] = []
    prev, seq, since = GENESIS, 0, 0

    def add(event: AuditEvent) -> None:
        nonlocal prev, seq
        seq += 1
        unhashed = msgspec.structs.replace(event, seq=seq, prev=prev)
        record = msgspec.structs.replace(unhashed, hash=record_hash(unhashed))
        out.append(canonical(record))
        prev = record.hash or ""

    for i in range(n):
        add(AuditEvent(type="e", time=clock.now(), detail={"i": i}))
        since += 1
        if since >= every:
            add(
                AuditEvent(
                    type=CHECKPOINT,
                    time=clock.now(),
                    detail={"jws": signer.sign(seq, prev), "kid": signer.kid},
                )
            )
            since = 0
        clock.advance(timedelta(seconds=1))
    return out


_SIGNER = CheckpointSigner.generate()
_KEYS = {_SIGNER.kid: _SIGNER._private}


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(min_value=3, max_value=40), every=st.integers(1, 12))
def test_any_single_tampering_is_found_at_the_tampered_record(
    data: st.DataObject, n: int, every: int
) -> None:
    lines = build(n, _SIGNER, every)
    assert verify_lines(lines, _KEYS).ok
    op = data.draw(st.sampled_from(["alter", "rehash", "remove", "swap", "duplicate"]))
    i = data.draw(st.integers(min_value=0, max_value=len(lines) - 2))
    tampered = list(lines)
    if op == "alter":
        rec = msgspec.json.decode(tampered[i])
        rec["time"] = "1999-01-01T00:00:00Z"
        tampered[i] = canonical(rec)
        expect = ("altered", i + 1)
    elif op == "rehash":  # altered, and its hash recomputed to match
        rec = msgspec.json.decode(tampered[i])
        rec["time"] = "1999-01-01T00:00:00Z"
        tampered[i] = rehash(rec)
        expect = ("altered", i + 1)
    elif op == "remove":
        del tampered[i]
        expect = ("removed", i + 1)
    elif op == "swap":
        tampered[i], tampered[i + 1] = tampered[i + 1], tampered[i]
        expect = ("reordered", i + 1)
    else:
        j = data.draw(st.integers(min_value=i + 1, max_value=len(lines)))
        tampered.insert(j, tampered[i])
        expect = ("inserted", j + 1)
    report = verify_lines(tampered, _KEYS)
    assert report.problem is not None, op
    assert (report.problem.kind, report.problem.line) == expect, report.problem.message
    assert re.search(r"seq \d+", report.problem.message)


# -- keys on the command line -------------------------------------------------------------


def test_keygen_writes_a_private_key_once_and_prints_the_jwks_that_verifies_its_chain(
    tmp_path: Path,
) -> None:
    key = tmp_path / "audit-signing.pem"
    result = run("keygen", str(key))
    assert result.exit_code == 0, result.output
    assert key.stat().st_mode & 0o777 == 0o600
    jwks = json.loads(result.output)
    (jwk,) = jwks["keys"]
    assert "d" not in jwk
    again = CliRunner().invoke(audit, ["keygen", str(key)])
    assert again.exit_code == 1
    assert "not overwriting" in again.output
    printed = json.loads(run("jwks", str(key)).output)
    assert printed["keys"][0]["kid"] == jwk["kid"]
    assert "d" not in printed["keys"][0]

    signer = CheckpointSigner.from_file(key)
    chain = tmp_path / "chain.jsonl"
    chain.write_bytes(b"".join(line + b"\n" for line in build(12, signer, 5)))
    public = tmp_path / "audit.jwks"
    public.write_text(result.output)
    assert run("verify", str(chain), "--key", str(public)).exit_code == 0


def test_a_key_file_that_is_not_a_key_is_a_clear_error(chain: Chain, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}')
    result = CliRunner().invoke(audit, ["verify", str(chain.path), "--key", str(bad)])
    assert result.exit_code == 1
    assert "only Ed25519" in result.output

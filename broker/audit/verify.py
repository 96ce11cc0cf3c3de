"""Verify an exported chain (JSON lines) and name the first thing that is wrong with it.

Checks, in file order, stopping at the first problem:

- every line is a JSON object with ``seq`` (int ≥ 1), ``prev`` and ``hash`` (64 hex digits);
- each record's ``hash`` is the SHA-256 of its canonical encoding (``altered`` otherwise);
- ``seq`` continues without gaps (``removed``), never goes back (``reordered``/``inserted``);
- ``prev`` equals the hash of the record before (``altered``: a record whose hash was
  recomputed after an edit is found because its successor still links to the old hash);
- the chain starts at seq 1 from :data:`~broker.audit.chain.GENESIS` (unless ``partial``);
- every ``audit.checkpoint`` record's JWS verifies with the given keys (EdDSA only, key chosen
  by ``kid``) and signs exactly ``{seq: <its seq - 1>, head: <its prev>}``.

What it cannot see, by construction: records cut off after the last record of the file (compare
the last seq with the live chain or a later export), and a tail after the last checkpoint that
was rewritten with recomputed hashes (the report counts that unsigned tail). Without keys the
checkpoints' signatures are not checked, so the file only proves it is self-consistent.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from joserfc.jwk import OKPKey

from broker.audit.chain import GENESIS, record_hash
from broker.audit.log import CHECKPOINT
from broker.audit.signing import CheckpointError, verify_checkpoint

__all__ = ["Problem", "VerifyReport", "verify_lines"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """The first thing wrong: where (``line`` in the file, 1-based; the record's ``seq``), what
    (``kind``: malformed, altered, removed, reordered, inserted, bad-start, bad-signature,
    checkpoint-mismatch, empty) and a sentence for humans."""

    line: int
    seq: int | None
    kind: str
    message: str


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    signatures_checked: bool = False
    last_signed_seq: int | None = None  # the last seq a verified checkpoint covers
    unsigned_tail: int = 0  # records after the last checkpoint
    problem: Problem | None = None


class _Row(msgspec.Struct):
    line: int
    seq: int = 0
    prev: str = ""
    hash: str = ""
    hash_ok: bool = False
    type: str = ""
    jws: str | None = None
    error: str | None = None


def _row(line: int, raw: bytes | str) -> _Row:
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return _Row(line, error="not valid JSON")
    if not isinstance(obj, dict):
        return _Row(line, error="not a JSON object")
    seq, prev, hash_ = obj.get("seq"), obj.get("prev"), obj.get("hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        return _Row(line, error="not a chain record (no valid seq)")
    if not isinstance(prev, str) or not _HEX64.match(prev):
        return _Row(line, seq=seq, error="not a chain record (no valid prev)")
    if not isinstance(hash_, str) or not _HEX64.match(hash_):
        return _Row(line, seq=seq, error="not a chain record (no valid hash)")
    type_ = obj.get("type")
    detail = obj.get("detail")
    jws = detail.get("jws") if isinstance(detail, dict) else None
    return _Row(
        line,
        seq=seq,
        prev=prev,
        hash=hash_,
        hash_ok=hmac.compare_digest(record_hash(obj), hash_),
        type=type_ if isinstance(type_, str) else "",
        jws=jws if isinstance(jws, str) else None,
    )


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}..{last}"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def verify_lines(
    lines: Iterable[bytes | str],
    keys: Mapping[str, OKPKey] | None = None,
    *,
    partial: bool = False,
) -> VerifyReport:
    """Verify a chain given as JSON lines (blank lines are ignored). ``keys``: the public
    checkpoint keys by kid (None: signatures not checked). ``partial``: the file may start
    mid-chain (an export ``--from`` a seq, or a trimmed stream)."""
    rows = [_row(n, raw) for n, raw in enumerate(lines, start=1) if raw.strip()]
    report = VerifyReport(ok=False, signatures_checked=keys is not None)
    if not rows:
        report.problem = Problem(line=0, seq=None, kind="empty", message="no records")
        return report
    problem = _walk(rows, keys, partial, report)
    report.problem = problem
    report.ok = problem is None
    return report


def _walk(
    rows: list[_Row], keys: Mapping[str, OKPKey] | None, partial: bool, report: VerifyReport
) -> Problem | None:
    positions: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.error is None:
            positions.setdefault(r.seq, []).append(i)

    def successor_links(i: int) -> bool | None:
        """Does the record after row i link to row i's hash? (None: no next record)"""
        if i + 1 >= len(rows) or rows[i + 1].error is not None:
            return None
        return _same(rows[i + 1].prev, rows[i].hash)

    expected: int | None = None
    prev_hash = ""
    last_cp: int | None = None
    for i, r in enumerate(rows):
        where = f"line {r.line} (seq {r.seq})"
        if r.error is not None:
            return Problem(line=r.line, seq=r.seq or None, kind="malformed", message=r.error)
        if not r.hash_ok:
            return Problem(
                line=r.line,
                seq=r.seq,
                kind="altered",
                message=f"{where} was altered (or forged): its content does not match its hash",
            )
        if expected is not None and r.seq > expected:
            later = [p for p in positions.get(expected, []) if p > i]
            if later:
                moved = rows[later[0]]
                return Problem(
                    line=r.line,
                    seq=r.seq,
                    kind="reordered",
                    message=f"{where} comes before seq {expected}, which is at line "
                    f"{moved.line}: records were reordered",
                )
            missing = _span(expected, r.seq - 1)
            return Problem(
                line=r.line,
                seq=expected,
                kind="removed",
                message=f"{missing} missing: removed before {where}",
            )
        if expected is not None and r.seq < expected:
            earlier = [p for p in positions.get(r.seq, []) if p < i]
            if earlier:
                first = rows[earlier[0]]
                if _same(first.hash, r.hash):
                    return Problem(
                        line=r.line,
                        seq=r.seq,
                        kind="inserted",
                        message=f"{where} is a copy of line {first.line}: inserted record",
                    )
                # Two records claim this seq: the one the chain goes on from is genuine.
                if successor_links(i) and not successor_links(earlier[0]):
                    return Problem(
                        line=first.line,
                        seq=r.seq,
                        kind="inserted",
                        message=f"line {first.line} (seq {r.seq}) was inserted: line {r.line} "
                        f"also claims seq {r.seq} and the chain continues from it",
                    )
                return Problem(
                    line=r.line,
                    seq=r.seq,
                    kind="inserted",
                    message=f"{where} was inserted: seq {r.seq} is already at line {first.line}",
                )
            return Problem(
                line=r.line,
                seq=r.seq,
                kind="reordered",
                message=f"{where} is out of place: seq {expected} was expected here",
            )
        if expected is None:
            if not partial and r.seq != 1 and positions.get(1):
                return Problem(
                    line=r.line,
                    seq=r.seq,
                    kind="reordered",
                    message=f"{where} comes before seq 1, which is at line "
                    f"{rows[positions[1][0]].line}: records were reordered",
                )
            if not partial and r.seq != 1:
                return Problem(
                    line=r.line,
                    seq=1,
                    kind="removed",
                    message=f"the chain starts at seq {r.seq}: {_span(1, r.seq - 1)} missing "
                    "(removed; or an export --from a later seq: verify it with --partial)",
                )
            if not partial and not _same(r.prev, GENESIS):
                return Problem(
                    line=r.line,
                    seq=r.seq,
                    kind="bad-start",
                    message=f"{where} does not start from the genesis hash",
                )
        elif not _same(r.prev, prev_hash):
            before = rows[i - 1]
            twin = [p for p in positions[r.seq] if p != i]
            if twin:
                return Problem(
                    line=r.line,
                    seq=r.seq,
                    kind="inserted",
                    message=f"{where} was inserted: it does not link to seq {before.seq} and "
                    f"line {rows[twin[0]].line} also claims seq {r.seq}",
                )
            if successor_links(i) is not False:
                # This record is intact and its successor agrees: the one before changed.
                return Problem(
                    line=before.line,
                    seq=before.seq,
                    kind="altered",
                    message=f"line {before.line} (seq {before.seq}) was altered and its hash "
                    f"recomputed: seq {r.seq} (line {r.line}) links to a different hash",
                )
            return Problem(
                line=r.line,
                seq=r.seq,
                kind="altered",
                message=f"{where} was altered and its hash recomputed: it does not link to "
                f"seq {before.seq} (line {before.line})",
            )
        if r.type == CHECKPOINT:
            report.checkpoints += 1
            problem = _checkpoint(r, keys, where)
            if problem is not None:
                return problem
            last_cp = r.seq
            if keys is not None:
                report.last_signed_seq = r.seq - 1
        expected = r.seq + 1
        prev_hash = r.hash
        report.records += 1
        if report.first_seq is None:
            report.first_seq = r.seq
        report.last_seq = r.seq
    report.unsigned_tail = (report.last_seq or 0) - (last_cp or (report.first_seq or 1) - 1)
    return None


def _checkpoint(r: _Row, keys: Mapping[str, OKPKey] | None, where: str) -> Problem | None:
    if r.jws is None:
        return Problem(
            line=r.line, seq=r.seq, kind="bad-signature", message=f"{where}: checkpoint without JWS"
        )
    if keys is None:
        signed = _unverified_payload(r.jws)
    else:
        try:
            signed = verify_checkpoint(r.jws, keys)
        except CheckpointError as exc:
            return Problem(
                line=r.line,
                seq=r.seq,
                kind="bad-signature",
                message=f"{where}: checkpoint signature rejected: {exc}",
            )
    if signed is None or signed[0] != r.seq - 1 or not _same(signed[1], r.prev):
        covered = f"seq {signed[0]}" if signed else "nothing readable"
        return Problem(
            line=r.line,
            seq=r.seq,
            kind="checkpoint-mismatch",
            message=f"{where}: the checkpoint signs {covered}, not the chain in this file up "
            f"to seq {r.seq - 1}: records before it were rewritten",
        )
    return None


def _unverified_payload(token: str) -> tuple[int, str] | None:
    """The payload of a JWS without checking its signature (for the consistency check that
    is all we can do without keys)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        data: Any = msgspec.json.decode(raw)
    except (ValueError, msgspec.DecodeError):
        return None
    if not isinstance(data, dict):
        return None
    seq, head = data.get("seq"), data.get("head")
    if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(head, str):
        return None
    return seq, head

"""What a revocation looks like on the wire: the outbox record and the SET claims built from it.

Pure: no I/O, no clock. Owns

- :class:`Revocation` — the facts of one ``lease.revoked`` audit event that receivers get;
- :class:`OutboxEntry` — what the outbox stream holds per revocation (the revocation, a random
  ``txn`` shared by the SETs that all receivers get for it, and when it was published);
- :func:`set_claims` — the claims of the Security Event Token (RFC 8417) for one receiver;
- :func:`set_jti` — the SET's ``jti``: derived from ``txn`` and the receiver, so that a retried
  delivery carries the same ``jti`` (receivers deduplicate on it, RFC 8935 §2).

The exact shape is documented in docs/ssf.md; a test pins it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from broker.audit import AuditEvent

__all__ = [
    "CREDENTIAL_MEMBER",
    "PUSH_DELIVERY",
    "SESSION_REVOKED",
    "SET_CONTENT_TYPE",
    "SET_TYP",
    "SPEC_VERSION",
    "OutboxEntry",
    "Revocation",
    "set_claims",
    "set_jti",
]

#: The CAEP event every revocation is sent as.
SESSION_REVOKED: Final = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
#: Our own event member (SSF: members not defined by the event type must be named by a URI).
CREDENTIAL_MEMBER: Final = "https://jit-broker.dev/secevent/credential"
#: The JOSE ``typ`` of a SET (RFC 8417 §2.3) and the media type of a push (RFC 8935 §2).
SET_TYP: Final = "secevent+jwt"
SET_CONTENT_TYPE: Final = "application/secevent+jwt"
#: RFC 8935 push delivery, as named in ``delivery_methods_supported`` (SSF 1.0).
PUSH_DELIVERY: Final = "urn:ietf:rfc:8935"
SPEC_VERSION: Final = "1_0"

_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces (lease and task ids)
_TRIGGER = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_TXN = re.compile(r"^[0-9a-f]{32}$")

# CAEP 1.0 ``initiating_entity`` for the triggers we know. Unknown triggers (and ``explicit``,
# which an owner or an admin client may have asked for) leave the optional member out.
_INITIATOR: Final = {
    "ttl": "policy",
    "mint_timeout": "system",
    "task_completed": "user",
    "workload": "user",
    "approval_remint": "system",
}
_USER_REASON: Final = {
    "ttl": "The credential reached the end of its time to live.",
    "task_completed": "The task the credential was issued for has completed.",
    "explicit": "The credential was revoked on request.",
    "workload": "Every credential of the workload was revoked on request.",
    "approval_remint": "The credential was replaced by one issued after a new approval.",
    "mint_timeout": "The credential's issuance did not complete in time.",
}


class Revocation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One revoked credential, as receivers learn of it. Identifiers only, never a secret."""

    lease_id: str  # the credential's id; for the JWT issuer, the token's ``jti``
    task_id: str
    trigger: str  # ttl | task_completed | explicit | workload | ...
    revoked_at: datetime
    issuer: str | None = None  # the broker's issuer instance that minted it ("pg-orders")

    def __post_init__(self) -> None:
        if not _ID.match(self.lease_id):
            raise ValueError("lease_id must be 1-128 printable ASCII characters")
        if not _ID.match(self.task_id):
            raise ValueError("task_id must be 1-128 printable ASCII characters")
        if not _TRIGGER.match(self.trigger):
            raise ValueError("trigger must be 1-64 characters of [A-Za-z0-9_.:-]")
        if self.issuer is not None and not _ID.match(self.issuer):
            raise ValueError("issuer must be 1-128 printable ASCII characters")
        if self.revoked_at.tzinfo is None:
            raise ValueError("revoked_at must be timezone-aware")

    @classmethod
    def from_audit(cls, event: AuditEvent) -> Revocation:
        """The revocation a ``lease.revoked`` audit event records. ValueError for any other
        event or a malformed one."""
        if event.type != "lease.revoked":
            raise ValueError(f"not a lease.revoked event: {event.type!r}")
        if not event.lease_id or not event.task_id:
            raise ValueError("a lease.revoked event without lease_id or task_id")
        trigger = event.detail.get("trigger")
        return cls(
            lease_id=event.lease_id,
            task_id=event.task_id,
            trigger=trigger if isinstance(trigger, str) and trigger else "unknown",
            revoked_at=event.time,
            issuer=event.issuer,
        )


class OutboxEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One record of the outbox stream (encoded as JSON in its ``e`` field)."""

    txn: str  # 128 random bits, hex: RFC 8417 ``txn``, the same in every receiver's SET
    published_at: int  # seconds since the epoch: the SETs' ``iat``
    revocation: Revocation

    def __post_init__(self) -> None:
        if not _TXN.match(self.txn):
            raise ValueError("txn must be 32 lowercase hex digits")


def set_jti(txn: str, receiver: str) -> str:
    """The ``jti`` of the SET for ``receiver``: unique per revocation and receiver, and the same
    on every retry so that a receiver can drop a duplicate (RFC 8935 §2, §4)."""
    return hashlib.sha256(f"{txn}\0{receiver}".encode()).hexdigest()[:32]


def set_claims(entry: OutboxEntry, *, issuer: str, receiver: str, audience: str) -> dict[str, Any]:
    """The claims of the SET that tells ``receiver`` about ``entry``.

    Top-level ``sub_id`` (SSF 1.0, RFC 9493) and, for receivers written against SSF drafts
    before 1.0, the same subject as the event's ``subject`` member. No ``exp``: RFC 8417 §2.2
    advises against it (a SET states a fact; it does not expire)."""
    r = entry.revocation
    subject = {"format": "opaque", "id": r.lease_id}
    event: dict[str, Any] = {
        "subject": dict(subject),
        "event_timestamp": int(r.revoked_at.timestamp()),
    }
    initiator = _INITIATOR.get(r.trigger)
    if initiator is not None:
        event["initiating_entity"] = initiator
    event["reason_admin"] = {
        "en": f"jit-broker revoked lease {r.lease_id} of task {r.task_id} (trigger: {r.trigger})"
    }
    event["reason_user"] = {"en": _USER_REASON.get(r.trigger, "The credential was revoked.")}
    credential: dict[str, str] = {"lease_id": r.lease_id, "task_id": r.task_id}
    if r.issuer is not None:
        credential["issuer"] = r.issuer
    credential["trigger"] = r.trigger
    event[CREDENTIAL_MEMBER] = credential
    return {
        "iss": issuer,
        "iat": entry.published_at,
        "jti": set_jti(entry.txn, receiver),
        "aud": audience,
        "txn": entry.txn,
        "sub_id": subject,
        "events": {SESSION_REVOKED: event},
    }

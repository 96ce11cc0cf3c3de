"""OpenID Shared Signals (SSF 1.0) transmitter: every revocation is pushed to the configured
receivers as a signed Security Event Token (RFC 8417) with the CAEP ``session-revoked`` event,
delivered per RFC 8935 (push), in order, retried until acknowledged.

- :mod:`broker.ssf.set` — the outbox record and the SET claims (pure);
- :mod:`broker.ssf.keys` — the signing key and its JWKS;
- :mod:`broker.ssf.outbox` — the Redis stream, cursors, locks and retry state (Lua);
- :mod:`broker.ssf.transmitter` — :class:`SsfTransmitter` (publish, delivery rounds, the loop,
  the configuration document) and :class:`SsfSink` (the audit sink that feeds it).

See docs/ssf.md.
"""

from __future__ import annotations

from broker.ssf.keys import ALGORITHMS, SetSigner
from broker.ssf.set import (
    CREDENTIAL_MEMBER,
    PUSH_DELIVERY,
    SESSION_REVOKED,
    SET_CONTENT_TYPE,
    SET_TYP,
    OutboxEntry,
    Revocation,
    set_claims,
    set_jti,
)
from broker.ssf.transmitter import JWKS_PATH, ReceiverStatus, SsfSink, SsfTransmitter

__all__ = [
    "ALGORITHMS",
    "CREDENTIAL_MEMBER",
    "JWKS_PATH",
    "PUSH_DELIVERY",
    "SESSION_REVOKED",
    "SET_CONTENT_TYPE",
    "SET_TYP",
    "OutboxEntry",
    "ReceiverStatus",
    "Revocation",
    "SetSigner",
    "SsfSink",
    "SsfTransmitter",
    "set_claims",
    "set_jti",
]

"""Idempotent credential requests: a retried ``POST /v1/credentials`` with the same
``Idempotency-Key`` gets the same lease and credential, never a second one (docs/adr/0009).

One record per (caller, task, key) in Redis, in the caller's hash slot::

    {prefix}:{o:<owner key>}:idem:<sha256(task id, key)>   hash
        state    pending | done
        digest   SHA-256 of the request body (canonical JSON)
        claim    who holds a pending record (a random token)
        lease    the lease id (done)
        sealed   the response, AES-256-GCM (done)

The first request claims the record (``pending``), mints, and seals its response into it; a
concurrent duplicate waits for it, a later one reads it. A different body under the same key is
refused. The response holds the credential, so it is sealed with a key derived (HKDF) from the
broker's audit HMAC key *and* the caller's idempotency key, which is never stored (only its
hash is): a Redis dump alone decrypts nothing. The record lives until the credential expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.clock import Clock, to_ms
from broker.errors import BrokerError, Conflict, InvalidRequest
from broker.leases.keys import owner_key
from broker.state import opt_text

__all__ = ["PURPOSE", "Claim", "Idempotency", "IdempotencyMismatch", "Replay", "valid_key"]

#: What an ``Idempotency-Key`` may be: 1-200 visible ASCII characters (a UUID fits).
MAX_KEY = 200
#: The HKDF ``info`` of the key derived from the audit HMAC key for sealing responses.
PURPOSE = b"jit-broker idempotency v1"

# KEYS: record. ARGV: digest, claim token, pending ttl ms
# -> {"claimed"} | {"mismatch"} | {"pending"} | {"done", lease, sealed}
_BEGIN = """
local h = redis.call('HMGET', KEYS[1], 'state', 'digest', 'lease', 'sealed')
if not h[1] then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'digest', ARGV[1], 'claim', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'claimed'}
end
if h[2] ~= ARGV[1] then return {'mismatch'} end
if h[1] == 'pending' then return {'pending'} end
return {'done', h[3], h[4]}
"""

# KEYS: record. ARGV: claim token, lease, sealed, keep ms
_FINISH = """
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'lease', ARGV[2], 'sealed', ARGV[3])
redis.call('HDEL', KEYS[1], 'claim')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: record. ARGV: claim token
_ABANDON = """
if redis.call('HGET', KEYS[1], 'claim') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class IdempotencyMismatch(BrokerError):
    status = 422
    code = "idempotency-key-reused"
    oauth_error = "invalid_request"


def valid_key(key: str) -> bool:
    return 1 <= len(key) <= MAX_KEY and key.isascii() and key.isprintable() and " " not in key


@dataclass(frozen=True)
class Claim:
    """This request owns the record: mint, then :meth:`Idempotency.finish` or ``abandon``."""

    record: str
    token: str
    cipher_key: bytes


@dataclass(frozen=True)
class Replay:
    """An earlier request with this key succeeded: its response (JSON bytes) and lease."""

    body: bytes
    lease_id: str


class Idempotency:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        master_key: bytes,
        clock: Clock,
        *,
        pending_ttl: timedelta = timedelta(seconds=60),
        wait: timedelta = timedelta(seconds=15),
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self._master = master_key
        self.clock = clock
        self.pending_ttl = pending_ttl
        self.wait = wait
        self._begin = redis.register_script(_BEGIN)
        self._finish = redis.register_script(_FINISH)
        self._abandon = redis.register_script(_ABANDON)

    def _record(self, owner: str, task_id: str, key: str) -> str:
        name = hashlib.sha256(f"{task_id}\0{key}".encode()).hexdigest()[:32]
        return f"{self.prefix}:{{o:{owner_key(owner)}}}:idem:{name}"

    def _cipher_key(self, owner: str, task_id: str, key: str) -> bytes:
        """HMAC-SHA256 keyed with the broker's derived key over the caller, task and key."""
        message = f"{owner}\0{task_id}\0{key}".encode()
        return hmac.new(self._master, message, hashlib.sha256).digest()

    async def begin(
        self, owner: str, task_id: str, key: str, request_digest: str
    ) -> Claim | Replay:
        """Claim the record, or the earlier response. A duplicate that arrives while the
        first is still minting waits for it (up to ``wait``)."""
        if not valid_key(key):
            raise InvalidRequest(f"Idempotency-Key: 1-{MAX_KEY} visible ASCII characters")
        record = self._record(owner, task_id, key)
        cipher_key = self._cipher_key(owner, task_id, key)
        token = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait.total_seconds()
        while True:
            reply = await self._begin(
                keys=[record],
                args=[request_digest, token, int(self.pending_ttl.total_seconds() * 1000)],
            )
            state = opt_text(reply[0])
            if state == "claimed":
                return Claim(record, token, cipher_key)
            if state == "mismatch":
                raise IdempotencyMismatch(
                    "this Idempotency-Key was used with a different request; use a new key"
                )
            if state == "done":
                return Replay(_open(cipher_key, record, reply[2]), opt_text(reply[1]) or "")
            if loop.time() >= deadline:
                raise Conflict("a request with this Idempotency-Key is still in progress")
            await asyncio.sleep(0.05)

    async def finish(self, claim: Claim, body: bytes, lease_id: str, until: datetime) -> None:
        """Keep the response for replays until ``until`` (the credential's expiry)."""
        keep_ms = max(1000, to_ms(until) - to_ms(self.clock.now()))
        sealed = _seal(claim.cipher_key, claim.record, body)
        await self._finish(keys=[claim.record], args=[claim.token, lease_id, sealed, keep_ms])

    async def abandon(self, claim: Claim) -> None:
        """The request failed or needs approval: a retry starts afresh."""
        await self._abandon(keys=[claim.record], args=[claim.token])


def _seal(key: bytes, record: str, body: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, body, record.encode())


def _open(key: bytes, record: str, sealed: bytes | str | None) -> bytes:
    raw = sealed.encode() if isinstance(sealed, str) else sealed
    if not raw or len(raw) < 13:
        raise Conflict("the stored response for this Idempotency-Key is unreadable")
    try:
        return AESGCM(key).decrypt(raw[:12], raw[12:], record.encode())
    except InvalidTag:
        raise Conflict("the stored response for this Idempotency-Key is unreadable") from None

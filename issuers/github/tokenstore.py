"""Encrypted copies of minted installation tokens, by lease id, until GitHub expires them.

Why it exists: GitHub revokes an installation token only through ``DELETE /installation/token``
*authenticated with that token*, and it offers no way to find a token by name. The broker's
lease keeps only non-secret handles, so the issuer keeps the token itself, where every broker
replica can reach it, for as long as the token can live:

- in the broker's Redis (``context.redis``) under ``<state_prefix>:token:{<lease id>}``, with a
  Redis expiry a little past GitHub's ``expires_at``;
- encrypted with AES-256-GCM under a key only the broker holds (``state_key_file``); the
  associated data binds each ciphertext to its instance and lease id, so a copy moved to
  another lease does not decrypt. A reader of Redis alone learns no token.

The value is ``base64(0x01 | key id (8 bytes) | nonce (12 bytes) | ciphertext+tag)`` (ASCII,
so it reads back the same whether or not the Redis client decodes responses). The key id
(a hash of the key, not the key) picks the decryption key, so a key can be rotated while older
copies (at most an hour old) still decrypt with ``previous_state_key_files``.

Without Redis (allowed only in development mode; ``jit dev`` itself hands issuers its in-memory
Redis) the copies live in this process's memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.clock import Clock
from broker.errors import IssuerError, IssuerUnavailable
from broker.types import Secret

__all__ = ["TokenStore", "key_id", "valid_lease_id"]

_VERSION: Final = b"\x01"
_AAD_LABEL: Final = b"jit-broker/github-installation-token/v1"
_LEASE_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


def key_id(key: bytes) -> bytes:
    """8 bytes naming a state key without revealing it."""
    return hashlib.sha256(b"jit-broker/github-state-key-id\x00" + key).digest()[:8]


def valid_lease_id(lease_id: str) -> bool:
    """Lease ids this store can name a key after (the broker's are ``<hex>.<hex>``)."""
    return bool(_LEASE_ID.match(lease_id))


class TokenStore:
    """Put, get and delete one encrypted token per lease id. ``repr`` shows no key."""

    def __init__(
        self,
        *,
        instance: str,
        keys: tuple[bytes, ...],
        clock: Clock,
        redis: Any = None,
        prefix: str = "",
    ) -> None:
        if not keys:
            raise ValueError("at least one state key")
        self._instance = instance
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self._current = key_id(keys[0])
        self._clock = clock
        self._redis = redis
        self._prefix = prefix or f"jit:issuer:{instance}"
        self._memory: dict[str, tuple[bytes, datetime]] = {}

    def __repr__(self) -> str:
        where = "redis" if self._redis is not None else "memory"
        return f"TokenStore(instance={self._instance!r}, backend={where!r})"

    @property
    def shared(self) -> bool:
        """True when every replica sees the same copies (Redis), False for process memory."""
        return self._redis is not None

    def key(self, lease_id: str) -> str:
        """The Redis key of ``lease_id``'s copy; hash-tagged by lease so Cluster is fine."""
        return f"{self._prefix}:token:{{{lease_id}}}"

    # -- encryption ------------------------------------------------------------------------

    def _aad(self, lease_id: str) -> bytes:
        return b"\x00".join((_AAD_LABEL, self._instance.encode(), lease_id.encode()))

    def seal(self, lease_id: str, token: Secret) -> bytes:
        nonce = os.urandom(12)
        sealed = self._keys[self._current].encrypt(
            nonce, token.reveal().encode(), self._aad(lease_id)
        )
        return _VERSION + self._current + nonce + sealed

    def open(self, lease_id: str, blob: bytes) -> Secret:
        """The token in ``blob``; IssuerError if it is not ours, was tampered with, belongs to
        another lease, or was sealed with a key no longer configured."""
        if len(blob) < 1 + 8 + 12 + 16 or blob[:1] != _VERSION:
            raise IssuerError(
                f"github issuer {self._instance!r}: the stored token of lease {lease_id} is "
                "malformed"
            )
        aead = self._keys.get(blob[1:9])
        if aead is None:
            raise IssuerError(
                f"github issuer {self._instance!r}: the stored token of lease {lease_id} was "
                "sealed with a state key that is not configured (add it to "
                "previous_state_key_files)"
            )
        try:
            plain = aead.decrypt(blob[9:21], blob[21:], self._aad(lease_id))
        except InvalidTag:
            raise IssuerError(
                f"github issuer {self._instance!r}: the stored token of lease {lease_id} does "
                "not verify (tampered with, or copied from another lease)"
            ) from None
        return Secret(plain.decode())

    # -- storage ---------------------------------------------------------------------------

    async def put(self, lease_id: str, token: Secret, ttl: timedelta) -> None:
        """Store ``token`` for ``ttl`` (at least a second). IssuerUnavailable if Redis fails."""
        blob = self.seal(lease_id, token)
        ms = max(1000, int(ttl.total_seconds() * 1000))
        if self._redis is None:
            self._sweep()
            self._memory[lease_id] = (blob, self._clock.now() + timedelta(milliseconds=ms))
            return
        try:
            await self._redis.set(self.key(lease_id), base64.b64encode(blob), px=ms)
        except Exception as exc:
            raise self._down("store", exc) from None

    async def get(self, lease_id: str) -> Secret | None:
        """The token of ``lease_id``, or None if none is stored (never minted, revoked, or
        expired at GitHub)."""
        if not valid_lease_id(lease_id):
            return None
        if self._redis is None:
            self._sweep()
            entry = self._memory.get(lease_id)
            return self.open(lease_id, entry[0]) if entry is not None else None
        try:
            blob = await self._redis.get(self.key(lease_id))
        except Exception as exc:
            raise self._down("read", exc) from None
        if blob is None:
            return None
        try:
            raw = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            raw = b""  # open() reports it as malformed
        return self.open(lease_id, raw)

    async def delete(self, lease_id: str) -> None:
        if not valid_lease_id(lease_id):
            return
        if self._redis is None:
            self._memory.pop(lease_id, None)
            return
        try:
            await self._redis.delete(self.key(lease_id))
        except Exception as exc:
            raise self._down("delete", exc) from None

    async def ping(self) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.ping()
        except Exception as exc:
            raise self._down("reach", exc) from None

    def _sweep(self) -> None:
        now = self._clock.now()
        for lease_id in [k for k, (_, until) in self._memory.items() if until <= now]:
            del self._memory[lease_id]

    def _down(self, what: str, exc: Exception) -> IssuerUnavailable:
        return IssuerUnavailable(
            f"github issuer {self._instance!r}: cannot {what} the token store in Redis "
            f"({exc.__class__.__name__})"
        )

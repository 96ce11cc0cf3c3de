"""Issued and revoked certificate serials of one ``x509`` issuer instance, shared by every broker
replica through Redis (or kept in this process when the issuer has no Redis: unit tests).

Three keys under ``state_prefix``, all with one hash tag (one Redis Cluster slot; every
operation is a single Lua script, so it is atomic):

- ``<prefix>:{x509:<name>}:issued``      sorted set, serial -> the certificate's not_after (ms);
- ``<prefix>:{x509:<name>}:revoked``     sorted set, serial -> the lease's not_after (ms);
- ``<prefix>:{x509:<name>}:revoked_at``  hash, serial -> when it was first revoked (ms).

Entries are pruned once ``not_after + grace`` has passed (an expired certificate needs no CRL
entry; the grace covers relying parties whose clocks lag), and every key carries a TTL that
ends with its last entry, so an abandoned instance leaves nothing behind. Serials are public
(they are in the CRL); nothing here is secret. Times are the issuer's clock, in milliseconds.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Protocol

from redis.exceptions import RedisError

from broker.errors import IssuerUnavailable

__all__ = ["ClaimResult", "MemorySerialState", "RedisSerialState", "SerialState"]

ClaimResult = Literal["ok", "duplicate", "revoked"]


class SerialState(Protocol):
    async def claim(self, serial: str, not_after_ms: int, now_ms: int) -> ClaimResult:
        """Record that a certificate with ``serial`` is about to be signed. "duplicate" if one
        was already issued with it, "revoked" if its lease was revoked before it was minted."""
        ...

    async def revoke(self, serial: str, not_after_ms: int, now_ms: int) -> None:
        """Add ``serial`` to the revoked set (idempotent; keeps the first revocation time). A
        serial whose ``not_after`` is already past the grace is not added."""
        ...

    async def revoked(self, now_ms: int) -> list[tuple[str, int]]:
        """Every revoked serial still worth listing, with its revocation time, sorted."""
        ...

    async def ping(self) -> None: ...


# KEYS: issued, revoked, revoked_at. Every script first prunes entries whose score is below
# ARGV[1] (the cutoff: now - grace) and ends by setting each key's TTL to outlive its last
# entry by the grace (ARGV[2] = now, ARGV[3] = grace, both ms).
_LUA_COMMON: Final = """
local unpack = unpack or table.unpack
local cutoff, now, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local function prune()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. cutoff)
  for i = 1, #gone, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #gone) do chunk[#chunk + 1] = gone[j] end
    redis.call('ZREM', KEYS[2], unpack(chunk))
    redis.call('HDEL', KEYS[3], unpack(chunk))
  end
end
local function keep(zset, also)
  local last = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if #last == 0 then
    if also then redis.call('DEL', also) end
    return
  end
  local ttl = math.max(1000, math.floor(tonumber(last[2]) - now + grace))
  redis.call('PEXPIRE', zset, ttl)
  if also then redis.call('PEXPIRE', also, ttl) end
end
prune()
"""

# ARGV[4] serial, ARGV[5] the certificate's not_after (ms)
_CLAIM: Final = (
    _LUA_COMMON
    + """
if redis.call('ZSCORE', KEYS[2], ARGV[4]) then return 'revoked' end
if redis.call('ZADD', KEYS[1], 'NX', ARGV[5], ARGV[4]) == 0 then return 'duplicate' end
keep(KEYS[1], nil)
return 'ok'
"""
)

# ARGV[4] serial, ARGV[5] the lease's not_after (ms)
_REVOKE: Final = (
    _LUA_COMMON
    + """
if tonumber(ARGV[5]) >= tonumber(cutoff) then
  redis.call('ZADD', KEYS[2], 'GT', ARGV[5], ARGV[4])
  redis.call('HSETNX', KEYS[3], ARGV[4], ARGV[2])
end
keep(KEYS[2], KEYS[3])
return 'ok'
"""
)

_LIST: Final = (
    _LUA_COMMON
    + """
local out = {}
for _, serial in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  out[#out + 1] = serial
  out[#out + 1] = redis.call('HGET', KEYS[3], serial) or ARGV[2]
end
return out
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSerialState:
    """:class:`SerialState` on the broker's Redis (standalone, Sentinel or Cluster)."""

    def __init__(self, redis: Any, *, prefix: str, tag: str, grace_ms: int, label: str) -> None:
        base = f"{prefix}:{{{tag}}}"
        self._keys = [f"{base}:issued", f"{base}:revoked", f"{base}:revoked_at"]
        self._redis = redis
        self._grace_ms = grace_ms
        self._label = label  # "x509 issuer 'name'", for error messages
        self._claim = redis.register_script(_CLAIM)
        self._revoke = redis.register_script(_REVOKE)
        self._list = redis.register_script(_LIST)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def _args(self, now_ms: int, *more: object) -> list[object]:
        return [now_ms - self._grace_ms, now_ms, self._grace_ms, *more]

    async def _run(self, script: Any, what: str, args: list[object]) -> Any:
        try:
            return await script(keys=self._keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise IssuerUnavailable(
                f"{self._label}: the certificate state in Redis is unavailable ({what}: "
                f"{exc.__class__.__name__})"
            ) from None

    async def claim(self, serial: str, not_after_ms: int, now_ms: int) -> ClaimResult:
        result = _text(
            await self._run(self._claim, "claim", self._args(now_ms, serial, not_after_ms))
        )
        if result not in ("ok", "duplicate", "revoked"):
            raise IssuerUnavailable(f"{self._label}: unexpected answer from Redis")
        return result  # type: ignore[return-value]  # checked just above

    async def revoke(self, serial: str, not_after_ms: int, now_ms: int) -> None:
        await self._run(self._revoke, "revoke", self._args(now_ms, serial, not_after_ms))

    async def revoked(self, now_ms: int) -> list[tuple[str, int]]:
        flat = await self._run(self._list, "list", self._args(now_ms))
        pairs = [(_text(flat[i]), int(_text(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return sorted(pairs)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise IssuerUnavailable(
                f"{self._label}: Redis is unavailable ({exc.__class__.__name__})"
            ) from None


class MemorySerialState:
    """:class:`SerialState` in this process only: for tests, or an issuer built without Redis.
    Several broker replicas would each see only their own revocations."""

    def __init__(self, *, grace_ms: int) -> None:
        self._grace_ms = grace_ms
        self.issued: dict[str, int] = {}
        self.revoked_serials: dict[str, tuple[int, int]] = {}  # serial -> (not_after, revoked_at)

    def _prune(self, now_ms: int) -> int:
        cutoff = now_ms - self._grace_ms
        self.issued = {s: t for s, t in self.issued.items() if t >= cutoff}
        self.revoked_serials = {s: v for s, v in self.revoked_serials.items() if v[0] >= cutoff}
        return cutoff

    async def claim(self, serial: str, not_after_ms: int, now_ms: int) -> ClaimResult:
        self._prune(now_ms)
        if serial in self.revoked_serials:
            return "revoked"
        if serial in self.issued:
            return "duplicate"
        self.issued[serial] = not_after_ms
        return "ok"

    async def revoke(self, serial: str, not_after_ms: int, now_ms: int) -> None:
        cutoff = self._prune(now_ms)
        if not_after_ms >= cutoff:
            old = self.revoked_serials.get(serial)
            if old is None:
                self.revoked_serials[serial] = (not_after_ms, now_ms)
            else:
                self.revoked_serials[serial] = (max(old[0], not_after_ms), old[1])

    async def revoked(self, now_ms: int) -> list[tuple[str, int]]:
        self._prune(now_ms)
        return sorted((s, v[1]) for s, v in self.revoked_serials.items())

    async def ping(self) -> None:
        return None

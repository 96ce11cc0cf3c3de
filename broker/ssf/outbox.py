"""The SSF outbox in Redis: one stream of revocations, and a cursor, a lock and a retry state per
receiver. Every multi-step change is one Lua script.

::

    {prefix}:{ssf}:outbox    stream  one entry per revocation: s=<seq> e=<OutboxEntry JSON>
    {prefix}:{ssf}:head      string  the seq of the newest entry (INCR'd with each XADD)
    {prefix}:{ssf}:cursors   hash    receiver -> "<last delivered stream id> <its seq>"
    {prefix}:{ssf}:locks     hash    receiver -> "<holder token> <held until, ms>"
    {prefix}:{ssf}:retry     hash    receiver -> "<failed attempts> <next attempt, ms> <error>"
    {prefix}:{ssf}:seen      hash    receiver -> when a replica last had it configured (ms)

Every key carries the ``{ssf}`` hash tag, so each script touches one Redis Cluster slot.

- A receiver's cursor is created at the outbox's current end the first time any replica knows
  the receiver (on publish, on start, or on its first delivery round): a receiver added later
  gets the revocations from then on, not the backlog.
- The outbox is trimmed (``XTRIM MINID``) to the oldest cursor of the receivers that some
  replica has had configured within ``forget_after``; a receiver removed from every replica's
  configuration is forgotten after that, with its cursor, and stops holding the outbox back.
- The lock is a lease on the clock's time (like the reaper's visibility timeout): a replica that
  dies holding it is replaced once ``until`` has passed. Acknowledging and failing check the
  holder token (fencing) and acknowledging also checks the cursor it advances from.
- Times in Redis are milliseconds of the injected clock; seq numbers make ``lag`` O(1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from broker.ssf.set import OutboxEntry
from broker.state import text

__all__ = ["Acquired", "Outbox", "OutboxKeys", "Record", "RetryState"]

_PUBLISH: Final = """
-- KEYS: outbox head cursors seen; ARGV: payload ('' = only register) now_ms receiver...
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if last[1] then last_id = last[1][1] end
local head = redis.call('GET', KEYS[2]) or '0'
for i = 3, #ARGV do
  redis.call('HSETNX', KEYS[3], ARGV[i], last_id .. ' ' .. head)
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[2])
end
if ARGV[1] == '' then return {'', 0} end
local seq = redis.call('INCR', KEYS[2])
local id = redis.call('XADD', KEYS[1], '*', 's', seq, 'e', ARGV[1])
return {id, seq}
"""

_ACQUIRE: Final = """
-- KEYS: locks retry cursors seen outbox head; ARGV: receiver token now_ms until_ms
local now = tonumber(ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
local lk = redis.call('HGET', KEYS[1], ARGV[1])
if lk then
  local holder, till = string.match(lk, '^(%S+) (%d+)$')
  if holder ~= ARGV[2] and tonumber(till) > now then return {'busy', till, ''} end
end
local attempts = '0'
local rt = redis.call('HGET', KEYS[2], ARGV[1])
if rt then
  local a, nxt = string.match(rt, '^(%d+) (%d+)')
  attempts = a
  if tonumber(nxt) > now then return {'wait', nxt, a} end
end
local cur = redis.call('HGET', KEYS[3], ARGV[1])
if not cur then
  local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
  local last_id = '0-0'
  if last[1] then last_id = last[1][1] end
  cur = last_id .. ' ' .. (redis.call('GET', KEYS[6]) or '0')
  redis.call('HSET', KEYS[3], ARGV[1], cur)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[4])
return {'ok', cur, attempts}
"""

_RENEW: Final = """
-- KEYS: locks; ARGV: receiver token until_ms
local lk = redis.call('HGET', KEYS[1], ARGV[1])
if not lk or string.match(lk, '^(%S+) ') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return 1
"""

_ACK: Final = """
-- KEYS: locks cursors retry seen outbox
-- ARGV: receiver token from_id to_id to_seq forget_before_ms
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local lk = redis.call('HGET', KEYS[1], ARGV[1])
if not lk or string.match(lk, '^(%S+) ') ~= ARGV[2] then return {'lost', ''} end
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not cur or string.match(cur, '^(%S+) ') ~= ARGV[3] then return {'moved', ''} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4] .. ' ' .. ARGV[5])
local prev = redis.call('HGET', KEYS[3], ARGV[1]) or ''
redis.call('HDEL', KEYS[3], ARGV[1])
local forget = tonumber(ARGV[6])
local seen = redis.call('HGETALL', KEYS[4])
local min = nil
for i = 1, #seen, 2 do
  local name = seen[i]
  if name ~= ARGV[1] and tonumber(seen[i + 1]) < forget then
    redis.call('HDEL', KEYS[4], name)
    redis.call('HDEL', KEYS[2], name)
    redis.call('HDEL', KEYS[3], name)
    redis.call('HDEL', KEYS[1], name)
  else
    local c = redis.call('HGET', KEYS[2], name)
    if c then
      local cid = string.match(c, '^(%S+) ')
      if min == nil or older(cid, min) then min = cid end
    end
  end
end
if min and min ~= '0-0' then redis.call('XTRIM', KEYS[5], 'MINID', min) end
return {'ok', prev}
"""

_FAIL: Final = """
-- KEYS: locks retry; ARGV: receiver token attempts next_ms error
local lk = redis.call('HGET', KEYS[1], ARGV[1])
if not lk or string.match(lk, '^(%S+) ') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
return 1
"""

_RELEASE: Final = """
-- KEYS: locks; ARGV: receiver token
local lk = redis.call('HGET', KEYS[1], ARGV[1])
if lk and string.match(lk, '^(%S+) ') == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""

_decoder = msgspec.json.Decoder(OutboxEntry)
_encoder = msgspec.json.Encoder()


class OutboxKeys:
    def __init__(self, prefix: str) -> None:
        if not prefix or any(c in prefix for c in "{} "):
            raise ValueError(f"invalid key prefix {prefix!r}")
        base = f"{prefix}:{{ssf}}"
        self.outbox = f"{base}:outbox"
        self.head = f"{base}:head"
        self.cursors = f"{base}:cursors"
        self.locks = f"{base}:locks"
        self.retry = f"{base}:retry"
        self.seen = f"{base}:seen"


class Cursor(msgspec.Struct, frozen=True):
    id: str  # the last delivered stream id ("0-0": none yet)
    seq: int

    @classmethod
    def parse(cls, raw: Any) -> Cursor:
        ident, _, seq = text(raw).partition(" ")
        return cls(ident, int(seq or 0))


class Acquired(msgspec.Struct, frozen=True):
    """The outcome of trying to take a receiver's lock for a delivery round."""

    status: str  # ok | busy (another replica holds it) | wait (backing off until ``until_ms``)
    cursor: Cursor | None = None
    attempts: int = 0  # failed attempts so far (the current retry streak)
    until_ms: int = 0


class Record(msgspec.Struct, frozen=True):
    """One outbox entry. ``entry`` is None when it cannot be decoded (it is then skipped)."""

    id: str
    seq: int
    entry: OutboxEntry | None


class RetryState(msgspec.Struct, frozen=True):
    attempts: int
    next_ms: int
    error: str


class Outbox:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = OutboxKeys(prefix)
        self._publish = redis.register_script(_PUBLISH)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._ack = redis.register_script(_ACK)
        self._fail = redis.register_script(_FAIL)
        self._release = redis.register_script(_RELEASE)

    async def append(
        self, entry: OutboxEntry | None, *, now_ms: int, receivers: Sequence[str]
    ) -> tuple[str, int] | None:
        """Append ``entry`` (None: only register ``receivers``), creating the cursor of any
        receiver not known yet at the end *before* the new entry. Returns (stream id, seq)."""
        k = self.keys
        payload = _encoder.encode(entry).decode() if entry is not None else ""
        res = await self._publish(
            keys=[k.outbox, k.head, k.cursors, k.seen], args=[payload, now_ms, *receivers]
        )
        ident = text(res[0])
        return (ident, int(res[1])) if ident else None

    async def acquire(self, receiver: str, token: str, *, now_ms: int, until_ms: int) -> Acquired:
        k = self.keys
        res = await self._acquire(
            keys=[k.locks, k.retry, k.cursors, k.seen, k.outbox, k.head],
            args=[receiver, token, now_ms, until_ms],
        )
        status = text(res[0])
        if status == "ok":
            return Acquired("ok", Cursor.parse(res[1]), int(text(res[2]) or 0))
        return Acquired(status, None, int(text(res[2]) or 0), int(text(res[1])))

    async def renew(self, receiver: str, token: str, *, until_ms: int) -> bool:
        return bool(await self._renew(keys=[self.keys.locks], args=[receiver, token, until_ms]))

    async def read(self, after: Cursor, count: int) -> list[Record]:
        raw = await self.redis.xrange(self.keys.outbox, f"({after.id}", "+", count=count)
        out: list[Record] = []
        for ident, fields in raw or ():
            f = {text(a): b for a, b in (fields or {}).items()}
            try:
                entry: OutboxEntry | None = _decoder.decode(f["e"])
                seq = int(text(f["s"]))
            except (KeyError, ValueError, msgspec.DecodeError):
                entry, seq = None, after.seq + len(out) + 1
            out.append(Record(text(ident), seq, entry))
        return out

    async def ack(
        self, receiver: str, token: str, *, frm: Cursor, to: Record, forget_before_ms: int
    ) -> tuple[str, RetryState | None]:
        """Advance the cursor from ``frm`` to ``to`` and clear the retry state. Returns
        ``ok`` | ``lost`` (the lock is another replica's) | ``moved`` (the cursor is not
        ``frm`` any more), and the retry state that was cleared."""
        k = self.keys
        res = await self._ack(
            keys=[k.locks, k.cursors, k.retry, k.seen, k.outbox],
            args=[receiver, token, frm.id, to.id, to.seq, forget_before_ms],
        )
        prev = text(res[1])
        return text(res[0]), (_retry(prev) if prev else None)

    async def fail(
        self, receiver: str, token: str, *, attempts: int, next_ms: int, error: str
    ) -> bool:
        return bool(
            await self._fail(
                keys=[self.keys.locks, self.keys.retry],
                args=[receiver, token, attempts, next_ms, error],
            )
        )

    async def release(self, receiver: str, token: str) -> None:
        await self._release(keys=[self.keys.locks], args=[receiver, token])

    async def cursors(self) -> tuple[int, dict[str, Cursor]]:
        """The head seq and every receiver's cursor."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.head)
            pipe.hgetall(self.keys.cursors)
            head, raw = await pipe.execute()
        return int(text(head)) if head else 0, {text(n): Cursor.parse(c) for n, c in raw.items()}

    async def retry_states(self) -> dict[str, RetryState]:
        raw = await self.redis.hgetall(self.keys.retry)
        return {text(n): _retry(text(v)) for n, v in raw.items()}


def _retry(raw: str) -> RetryState:
    attempts, _, rest = raw.partition(" ")
    next_ms, _, error = rest.partition(" ")
    return RetryState(int(attempts or 0), int(next_ms or 0), error)

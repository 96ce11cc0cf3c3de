"""Leases and tasks in Redis: the Lua scripts that move a lease through its states atomically.

Each script touches the keys of one task only (one hash slot, see :mod:`broker.leases.keys`).
Expiry is always set relative (PEXPIRE), so a clock difference between the broker and Redis
cannot make a record vanish early. The indexes in other slots (``{due}``, ``{o:…}``,
``{overdue}``) are written by the manager in an order that never leaves a live lease without a
due entry. This module holds no policy: it
stores, loads and transitions; :mod:`broker.leases.manager` decides.

A lease hash holds the immutable part of the lease as JSON (``doc``) and the mutable fields
(``state``, ``handle``, ``attempts``, the revocation lock …) as plain fields, so scripts can
change state without parsing JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from broker.clock import from_ms, to_ms
from broker.leases.keys import Keys, task_key_of
from broker.state import opt_text
from broker.types import Lease, LeaseState, Principal, Scope

__all__ = ["LeaseRecord", "LeaseStore", "TaskRecord"]


class _Doc(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    task_id: str
    owner: str
    principal: Principal
    scope: Scope
    issued_at: datetime
    not_after: datetime
    purpose: str = ""
    cnf: dict[str, str] | None = None
    grant: str | None = None
    origin: str | None = None
    # Delegation (ADR 0040): additive, absent from records written before it.
    parent: str | None = None
    actors: tuple[Principal, ...] = ()


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as stored, with the bookkeeping the manager needs besides the :class:`Lease`."""

    lease: Lease
    created_ms: int
    rev: int
    trigger: str | None
    prev_state: str | None
    locker: str | None
    lock_until_ms: int


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    owner: str
    state: str  # open | completed
    created_at: datetime
    completed_at: datetime | None
    deadline: datetime | None
    lease_ids: list[str]


_enc = msgspec.json.Encoder()
_doc_dec = msgspec.json.Decoder(_Doc)
_handle_dec = msgspec.json.Decoder(dict[str, str])

# KEYS: task, task_leases, lease, parent lease (the lease itself when there is none)
# ARGV: owner, task_id, now_ms, lease_id, doc, not_after_ms, task_expire_ms, deadline_ms,
#       bounded ("1": not_after must not pass the task's deadline), parent lease id or ""
# Delegation (ADR 0040): a delegated lease is created in its parent's task (same slot) only
# while the parent is active, checked in this script so that revoking the parent and then
# walking the task's leases for its descendants cannot miss a child created meanwhile.
_CREATE = """
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'completed' then return 'completed' end
if not st then
  if ARGV[10] ~= '' then return 'parent' end
  redis.call('HSET', KEYS[1], 'task_id', ARGV[2], 'owner', ARGV[1], 'state', 'open',
             'created_ms', ARGV[3], 'deadline_ms', ARGV[8])
elseif redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 'conflict'
end
if ARGV[10] ~= '' and redis.call('HGET', KEYS[4], 'state') ~= 'active' then
  return 'parent'
end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline_ms') or ARGV[8])
if tonumber(ARGV[3]) >= deadline then return 'deadline' end
if ARGV[9] == '1' and tonumber(ARGV[6]) > deadline then return 'deadline' end
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[3], 'doc', ARGV[5], 'state', 'minting', 'created_ms', ARGV[3],
           'not_after_ms', ARGV[6], 'attempts', 0, 'rev', 0)
local exp = tonumber(redis.call('HGET', KEYS[1], 'expire_ms') or '0')
if tonumber(ARGV[7]) > exp then
  redis.call('HSET', KEYS[1], 'expire_ms', ARGV[7])
  redis.call('PEXPIRE', KEYS[1], ARGV[7] - ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[7] - ARGV[3])
end
return 'ok'
"""

# KEYS: lease. ARGV: handle_json
# minting → active. Otherwise (revocation began while the issuer was minting) the handle is
# recorded, the revision bumped so a revoker that began without it revokes again, and a
# finished lease is reopened.
_ACTIVATE = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'missing' end
redis.call('HSET', KEYS[1], 'handle', ARGV[1])
if st == 'minting' then
  redis.call('HSET', KEYS[1], 'state', 'active')
  return 'ok'
end
redis.call('HINCRBY', KEYS[1], 'rev', 1)
if st == 'revoked' or st == 'failed' then
  redis.call('HSET', KEYS[1], 'state', 'revoking')
  redis.call('HDEL', KEYS[1], 'revoked_at_ms')
  redis.call('PERSIST', KEYS[1])
end
return st
"""

# KEYS: lease. ARGV: me, now_ms, lock_until_ms, trigger
# Take the revocation lock. Returns {status, rev}: ok | busy | revoked | failed | missing.
_BEGIN = """
local h = redis.call('HMGET', KEYS[1], 'state', 'locker', 'lock_until_ms', 'rev')
local st = h[1]
if not st then return {'missing', 0} end
if st == 'revoked' or st == 'failed' then return {st, 0} end
if h[2] and h[2] ~= ARGV[1] and tonumber(h[3]) > tonumber(ARGV[2]) then
  return {'busy', tonumber(h[3])}
end
if st ~= 'revoking' then
  redis.call('HSET', KEYS[1], 'state', 'revoking', 'trigger', ARGV[4], 'prev_state', st)
end
redis.call('HSET', KEYS[1], 'locker', ARGV[1], 'lock_until_ms', ARGV[3])
return {'ok', tonumber(h[4] or '0')}
"""

# KEYS: lease. ARGV: me, rev, now_ms, final_state, retention_ms
_FINISH = """
local h = redis.call('HMGET', KEYS[1], 'state', 'locker', 'rev')
if h[1] ~= 'revoking' or h[2] ~= ARGV[1] then return 'lost' end
redis.call('HDEL', KEYS[1], 'locker', 'lock_until_ms')
if tonumber(h[3] or '0') ~= tonumber(ARGV[2]) then return 'again' end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'revoked_at_ms', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 'ok'
"""

# KEYS: lease. ARGV: me, error, overdue_after
# Returns {attempts, newly_overdue} or {-1, 0} when the lock was lost.
_FAIL = """
local h = redis.call('HMGET', KEYS[1], 'locker', 'overdue')
if h[1] ~= ARGV[1] then return {-1, 0} end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
redis.call('HDEL', KEYS[1], 'locker', 'lock_until_ms')
if n >= tonumber(ARGV[3]) and h[2] ~= '1' then
  redis.call('HSET', KEYS[1], 'overdue', '1')
  return {n, 1}
end
return {n, 0}
"""

# KEYS: task, task_leases. ARGV: owner, now_ms, expire_at_ms
_COMPLETE = """
local h = redis.call('HMGET', KEYS[1], 'state', 'owner', 'expire_ms')
if not h[1] or h[2] ~= ARGV[1] then return false end
if h[1] ~= 'completed' then
  redis.call('HSET', KEYS[1], 'state', 'completed', 'completed_ms', ARGV[2])
end
if tonumber(ARGV[3]) > tonumber(h[3] or '0') then
  redis.call('HSET', KEYS[1], 'expire_ms', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[3] - ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3] - ARGV[2])
end
return redis.call('SMEMBERS', KEYS[2])
"""

# KEYS: due. ARGV: now_ms, until_ms, limit
# Claim what is due by pushing it a visibility timeout into the future: a replica that dies
# holding a claim leaves the lease due again when the timeout passes.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


class LeaseStore:
    """Lease and task records in Redis under ``prefix``. Works with a standalone Redis, a
    Redis Cluster client or fakeredis; values may come back as bytes or str."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._create = redis.register_script(_CREATE)
        self._activate = redis.register_script(_ACTIVATE)
        self._begin = redis.register_script(_BEGIN)
        self._finish = redis.register_script(_FINISH)
        self._fail = redis.register_script(_FAIL)
        self._complete = redis.register_script(_COMPLETE)
        self._claim = redis.register_script(_CLAIM)

    # -- writes ----------------------------------------------------------------------------

    async def create(
        self,
        lease: Lease,
        *,
        due_ms: int,
        task_expire_ms: int,
        deadline_ms: int,
        bounded: bool,
    ) -> str:
        """Write-ahead: the due entry first, then the lease (state ``minting``) in its task,
        then the owner index. Returns ``ok``, ``completed`` (the task is closed) or
        ``conflict``; on anything but ``ok`` the index entries are removed again."""
        k = self.keys
        tkey = task_key_of(lease.id)
        doc = _enc.encode(
            _Doc(
                id=lease.id,
                task_id=lease.task_id,
                owner=lease.owner,
                principal=lease.principal,
                scope=lease.scope,
                issued_at=lease.issued_at,
                not_after=lease.not_after,
                purpose=lease.purpose,
                cnf=lease.cnf,
                grant=lease.grant,
                origin=lease.origin,
                parent=lease.parent,
                actors=lease.actors,
            )
        )
        if lease.parent is not None and task_key_of(lease.parent) != tkey:
            return "parent"  # a delegated lease lives in its parent's task (ADR 0040)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(k.due, {lease.id: due_ms})
            await self._create(
                keys=[
                    k.task(tkey),
                    k.task_leases(tkey),
                    k.lease(lease.id),
                    k.lease(lease.parent or lease.id),
                ],
                args=[
                    lease.owner,
                    lease.task_id,
                    to_ms(lease.issued_at),
                    lease.id,
                    doc,
                    to_ms(lease.not_after),
                    max(task_expire_ms, deadline_ms),
                    deadline_ms,
                    "1" if bounded else "0",
                    lease.parent or "",
                ],
                client=pipe,
            )
            pipe.zadd(k.owner_live(lease.owner), {lease.id: to_ms(lease.issued_at)})
            _, status, _ = await pipe.execute()
        result = opt_text(status) or "missing"
        if result != "ok":
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(k.owner_live(lease.owner), lease.id)
                pipe.zrem(k.due, lease.id)
                await pipe.execute()
        return result

    async def activate(self, lease_id: str, handle: dict[str, str], *, due_ms: int) -> str:
        """minting -> active with the handle, and the due entry moved to ``due_ms`` (not_after),
        in one round trip. If the lease was not ``minting`` any more, the caller reschedules it
        at once and revokes."""
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._activate(
                keys=[self.keys.lease(lease_id)], args=[_enc.encode(handle)], client=pipe
            )
            pipe.zadd(self.keys.due, {lease_id: due_ms})
            r, _ = await pipe.execute()
        return opt_text(r) or "missing"

    async def begin_revoke(
        self, lease_id: str, *, me: str, now_ms: int, lock_until_ms: int, trigger: str
    ) -> tuple[str, int]:
        r = await self._begin(
            keys=[self.keys.lease(lease_id)], args=[me, now_ms, lock_until_ms, trigger]
        )
        return opt_text(r[0]) or "missing", int(r[1])

    async def finish_revoke(
        self, lease_id: str, *, me: str, rev: int, now_ms: int, final: LeaseState, retention_ms: int
    ) -> str:
        r = await self._finish(
            keys=[self.keys.lease(lease_id)], args=[me, rev, now_ms, final.value, retention_ms]
        )
        return opt_text(r) or "lost"

    async def fail_revoke(
        self, lease_id: str, *, me: str, error: str, overdue_after: int
    ) -> tuple[int, bool]:
        r = await self._fail(keys=[self.keys.lease(lease_id)], args=[me, error, overdue_after])
        return int(r[0]), bool(int(r[1]))

    async def complete_task(
        self, owner: str, tkey: str, *, now_ms: int, expire_ms: int
    ) -> list[str] | None:
        k = self.keys
        r = await self._complete(
            keys=[k.task(tkey), k.task_leases(tkey)], args=[owner, now_ms, expire_ms]
        )
        if r is None:
            return None
        return sorted(s for s in (opt_text(x) for x in r) if s)

    async def task_deadline_ms(self, tkey: str, owner: str) -> int | None:
        """The deadline of an existing task of ``owner``; None for a task not yet created."""
        owner_raw, deadline = await self.redis.hmget(self.keys.task(tkey), ["owner", "deadline_ms"])
        if opt_text(owner_raw) != owner or deadline is None:
            return None
        return int(opt_text(deadline) or 0)

    async def schedule(self, lease_id: str, at_ms: int) -> None:
        await self.redis.zadd(self.keys.due, {lease_id: at_ms})

    async def claim_due(self, *, now_ms: int, until_ms: int, limit: int) -> list[str]:
        r = await self._claim(keys=[self.keys.due], args=[now_ms, until_ms, limit])
        return [s for s in (opt_text(x) for x in r) if s]

    async def next_due_ms(self) -> int | None:
        r = await self.redis.zrange(self.keys.due, 0, 0, withscores=True)
        return int(r[0][1]) if r else None

    async def settle(
        self, lease_id: str, owner: str, *, done_ms: int, retention_ms: int, overdue: bool
    ) -> None:
        """After a lease reached a final state: drop its due entry, move it from the owner's
        live index to the done index (trimmed to the retention window), clear the overdue
        flag. If the lease was reopened meanwhile (a mint that finished after revocation
        began), it is put back on the due index at once."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(k.due, lease_id)
            pipe.zrem(k.owner_live(owner), lease_id)
            pipe.zadd(k.owner_done(owner), {lease_id: done_ms})
            pipe.zremrangebyscore(k.owner_done(owner), "-inf", done_ms - retention_ms)
            pipe.pexpire(k.owner_done(owner), retention_ms)
            if overdue:
                pipe.srem(k.overdue, lease_id)
            pipe.hget(k.lease(lease_id), "state")
            results = await pipe.execute()
        state = opt_text(results[-1])
        if state is not None and LeaseState(state).live:
            await self.schedule(lease_id, done_ms)

    async def drop_due(self, lease_id: str) -> None:
        """Remove a due entry for a lease that needs nothing more (same re-check as settle)."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(k.due, lease_id)
            pipe.hget(k.lease(lease_id), "state")
            _, state = await pipe.execute()
        st = opt_text(state)
        if st is not None and LeaseState(st).live:
            await self.schedule(lease_id, 0)

    async def mark_overdue(self, lease_id: str) -> None:
        await self.redis.sadd(self.keys.overdue, lease_id)

    async def forget_owner_entry(self, owner: str, lease_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.owner_live(owner), lease_id)
            pipe.zrem(self.keys.owner_done(owner), lease_id)
            await pipe.execute()

    # -- reads -----------------------------------------------------------------------------

    async def load(self, lease_id: str) -> LeaseRecord | None:
        return _record(await self.redis.hgetall(self.keys.lease(lease_id)))

    async def load_many(self, lease_ids: list[str]) -> list[LeaseRecord | None]:
        if not lease_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for lid in lease_ids:
                pipe.hgetall(self.keys.lease(lid))
            rows = await pipe.execute()
        return [_record(r) for r in rows]

    async def owner_lease_ids(self, owner: str, *, include_done: bool, limit: int) -> list[str]:
        ids = [
            opt_text(x)
            for x in await self.redis.zrevrange(self.keys.owner_live(owner), 0, limit - 1)
        ]
        if include_done and len(ids) < limit:
            done = await self.redis.zrevrange(self.keys.owner_done(owner), 0, limit - len(ids) - 1)
            ids.extend(opt_text(x) for x in done)
        return [i for i in ids if i]

    async def overdue_ids(self, limit: int) -> list[str]:
        _, ids = await self.redis.sscan(self.keys.overdue, 0, count=limit)
        return sorted(s for s in (opt_text(x) for x in ids) if s)[:limit]

    async def load_task(self, owner: str, tkey: str) -> TaskRecord | None:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.task(tkey))
            pipe.smembers(k.task_leases(tkey))
            raw, members = await pipe.execute()
        if not raw:
            return None
        h = {opt_text(a): opt_text(b) for a, b in raw.items()}
        if h.get("owner") != owner:
            return None
        completed = h.get("completed_ms")
        deadline = h.get("deadline_ms")
        return TaskRecord(
            task_id=h.get("task_id") or "",
            owner=owner,
            state=h.get("state") or "open",
            created_at=from_ms(int(h.get("created_ms") or 0)),
            completed_at=from_ms(int(completed)) if completed else None,
            deadline=from_ms(int(deadline)) if deadline else None,
            lease_ids=sorted(s for s in (opt_text(x) for x in members) if s),
        )


def _record(raw: dict[Any, Any]) -> LeaseRecord | None:
    if not raw:
        return None
    h = {opt_text(a): opt_text(b) for a, b in raw.items()}
    doc = _doc_dec.decode(h.get("doc") or b"")
    raw_handle = h.get("handle")
    handle = _handle_dec.decode(raw_handle) if raw_handle else {}
    revoked = h.get("revoked_at_ms")
    trigger = h.get("trigger")
    lease = Lease(
        id=doc.id,
        task_id=doc.task_id,
        owner=doc.owner,
        principal=doc.principal,
        scope=doc.scope,
        issued_at=doc.issued_at,
        not_after=doc.not_after,
        state=LeaseState(h.get("state") or "revoked"),
        handle=handle,
        purpose=doc.purpose,
        revoked_at=from_ms(int(revoked)) if revoked else None,
        revoke_trigger=trigger,
        attempts=int(h.get("attempts") or 0),
        overdue=h.get("overdue") == "1",
        last_error=h.get("last_error"),
        cnf=doc.cnf,
        grant=doc.grant,
        origin=doc.origin,
        parent=doc.parent,
        actors=doc.actors,
    )
    return LeaseRecord(
        lease=lease,
        created_ms=int(h.get("created_ms") or 0),
        rev=int(h.get("rev") or 0),
        trigger=trigger,
        prev_state=h.get("prev_state"),
        locker=h.get("locker"),
        lock_until_ms=int(h.get("lock_until_ms") or 0),
    )

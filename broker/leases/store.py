"""Leases and tasks in Redis: the Lua scripts that move a lease through its states atomically,
and the ops the manager sends with them (see :mod:`broker.leases.keys` for the layout).

Every script touches one task hash (one slot). The indexes in other slots — the due shards and
their index, the owner's hash, the overdue and retry sets — are written by ops sent in the same
round trip, in an order that never leaves a live lease without a due entry. Expiry is always
relative (PEXPIRE), so a clock difference between the broker and Redis cannot make a record
vanish early: a task never expires while it has a live lease, and expires ``retention`` after
its last lease finished (or it was completed with none live).

This module holds no policy: it stores, loads and transitions; :mod:`broker.leases.manager`
decides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from broker.clock import from_ms, to_ms
from broker.leases.keys import DEFAULT_DUE_SHARDS, Keys, split_lease_id, task_key_of
from broker.state import opt_text, text
from broker.state.scripts import Op, Script, run
from broker.types import Lease, LeaseState, Principal, Scope

__all__ = ["LeaseRecord", "LeaseStore", "TaskRecord"]

_STATE = {
    "m": LeaseState.MINTING,
    "a": LeaseState.ACTIVE,
    "r": LeaseState.REVOKING,
    "R": LeaseState.REVOKED,
    "F": LeaseState.FAILED,
}
_CODE = {v: k for k, v in _STATE.items()}


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as stored, with the bookkeeping the manager needs besides the :class:`Lease`."""

    lease: Lease
    created_ms: int
    rev: int
    trigger: str | None
    prev_state: str | None
    locker: str | None
    lock_until_ms: int
    first_fail_ms: int | None = None
    # When the lease.minted / lease.revoked record of this lease was committed, while that
    # record is not known to be in the chain (a marker cleared once it is).
    minted_pending_ms: int | None = None
    revoked_pending_ms: int | None = None


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    owner: str
    state: str  # open | completed
    created_at: datetime
    completed_at: datetime | None
    deadline: datetime | None
    leases: list[LeaseRecord]


# The immutable facts of a lease, packed (msgpack) into one small field.
class _Facts(msgspec.Struct, array_like=True, frozen=True):
    created_ms: int
    not_after_ms: int
    issuer: str
    actions: tuple[str, ...]
    grant: str | None = None
    origin: str | None = None


class _Delegation(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a delegated (or delegable) lease keeps beyond the id: its parent, the subject with
    its claims and the actors, newest first (ADR 0040)."""

    principal: Principal
    parent: str | None = None
    actors: tuple[Principal, ...] = ()


_enc = msgspec.json.Encoder()
_pack = msgspec.msgpack.Encoder()
_facts = msgspec.msgpack.Decoder(_Facts)
_handle_dec = msgspec.json.Decoder(dict[str, str])
_delegation_dec = msgspec.json.Decoder(_Delegation)

# KEYS: task. ARGV: owner, task_id, purpose, now_ms, suffix, facts, resource, cnf ('' = none),
#       deadline_ms, bounded ('1': not_after must not pass the deadline), not_after_ms,
#       retention_ms, parent suffix ('' = none), delegation ('' = none)
# A delegated lease (ADR 0040) lives in its parent's task and is created only while the parent
# is active, checked here, so revoking the parent and then walking the task for its
# descendants cannot miss a child created meanwhile.
_CREATE = Script("""
local st = redis.call('HGET', KEYS[1], 's')
if st == 'c' then return 'completed' end
if ARGV[13] ~= '' and (not st or redis.call('HGET', KEYS[1], ARGV[13]) ~= 'a') then
  return 'parent'
end
if not st then
  redis.call('HSET', KEYS[1], 'o', ARGV[1], 't', ARGV[2], 's', 'o', 'c', ARGV[4],
             'd', ARGV[9], 'n', 0)
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'p', ARGV[3]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[12])
elseif redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then
  return 'conflict'
end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'd'))
if tonumber(ARGV[4]) >= deadline then return 'deadline' end
if ARGV[10] == '1' and tonumber(ARGV[11]) > deadline then return 'deadline' end
local s = ARGV[5]
if redis.call('HEXISTS', KEYS[1], s) == 1 then return 'exists' end
redis.call('HSET', KEYS[1], s, 'm', s .. 'm', ARGV[6], s .. 'r', ARGV[7])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], s .. 'k', ARGV[8]) end
if ARGV[14] ~= '' then redis.call('HSET', KEYS[1], s .. 'd', ARGV[14]) end
redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PERSIST', KEYS[1])
return 'ok'
""")

# KEYS: task. ARGV: suffix, handle_json ('' = none), now_ms
# minting → active, with an audit record pending. Otherwise (revocation began while the issuer
# was minting) the handle is recorded, the revision bumped so a revoker that began without it
# revokes again, and a finished lease is reopened (live again).
_ACTIVATE = Script("""
local s = ARGV[1]
local st = redis.call('HGET', KEYS[1], s)
if not st then return 'missing' end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], s .. 'h', ARGV[2]) end
redis.call('HSET', KEYS[1], s .. 'q', ARGV[3])
if st == 'm' then
  redis.call('HSET', KEYS[1], s, 'a')
  return 'ok'
end
redis.call('HINCRBY', KEYS[1], s .. 'v', 1)
if st == 'R' or st == 'F' then
  redis.call('HSET', KEYS[1], s, 'r')
  redis.call('HDEL', KEYS[1], s .. 'X')
  redis.call('HINCRBY', KEYS[1], 'n', 1)
  redis.call('PERSIST', KEYS[1])
end
return st
""")

# KEYS: task. ARGV: suffix, me, now_ms, lock_until_ms, trigger
# Take the revocation lock. Returns {status, rev}: ok | busy | R | F | missing.
_BEGIN = Script("""
local s = ARGV[1]
local h = redis.call('HMGET', KEYS[1], s, s .. 'l', s .. 'u', s .. 'v')
local st = h[1]
if not st then return {'missing', 0} end
if st == 'R' or st == 'F' then return {st, 0} end
if h[2] and h[2] ~= ARGV[2] and tonumber(h[3]) > tonumber(ARGV[3]) then
  return {'busy', tonumber(h[3])}
end
if st ~= 'r' then
  redis.call('HSET', KEYS[1], s, 'r', s .. 'T', ARGV[5], s .. 'P', st)
end
redis.call('HSET', KEYS[1], s .. 'l', ARGV[2], s .. 'u', ARGV[4])
return {'ok', tonumber(h[4] or '0')}
""")

# KEYS: task. ARGV: suffix, me, rev, now_ms, final ('R' | 'F'), retention_ms
# The lease reached its final state: an audit record pending; the task expires `retention`
# after its last live lease.
_FINISH = Script("""
local s = ARGV[1]
local h = redis.call('HMGET', KEYS[1], s, s .. 'l', s .. 'v')
if h[1] ~= 'r' or h[2] ~= ARGV[2] then return 'lost' end
redis.call('HDEL', KEYS[1], s .. 'l', s .. 'u')
if tonumber(h[3] or '0') ~= tonumber(ARGV[3]) then return 'again' end
redis.call('HSET', KEYS[1], s, ARGV[5], s .. 'X', ARGV[4], s .. 'w', ARGV[4])
if redis.call('HINCRBY', KEYS[1], 'n', -1) <= 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return 'ok'
""")

# KEYS: task. ARGV: suffix, me, error, overdue_after (attempts), now_ms, overdue_after_ms
# Overdue after that many failed attempts or that long since the first failure, whichever first.
# Returns {attempts, newly_overdue} or {-1, 0} when the lock was lost.
_FAIL = Script("""
local s = ARGV[1]
local h = redis.call('HMGET', KEYS[1], s .. 'l', s .. 'O', s .. 'F')
if h[1] ~= ARGV[2] then return {-1, 0} end
local n = redis.call('HINCRBY', KEYS[1], s .. 'A', 1)
local first = tonumber(h[3] or ARGV[5])
if not h[3] then redis.call('HSET', KEYS[1], s .. 'F', ARGV[5]) end
redis.call('HSET', KEYS[1], s .. 'E', ARGV[3])
redis.call('HDEL', KEYS[1], s .. 'l', s .. 'u')
local late = tonumber(ARGV[5]) - first >= tonumber(ARGV[6])
if (n >= tonumber(ARGV[4]) or late) and h[2] ~= '1' then
  redis.call('HSET', KEYS[1], s .. 'O', '1')
  return {n, 1}
end
return {n, 0}
""")

# KEYS: task. ARGV: owner, now_ms, retention_ms
# Close the task to new leases. Returns every lease suffix of it (false: no such task).
_COMPLETE = Script("""
local h = redis.call('HMGET', KEYS[1], 's', 'o', 'n')
if not h[1] or h[2] ~= ARGV[1] then return false end
if h[1] ~= 'c' then
  redis.call('HSET', KEYS[1], 's', 'c', 'x', ARGV[2])
end
if tonumber(h[3] or '0') <= 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
local out = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.len(f) == 8 then out[#out + 1] = f end
end
return out
""")

# KEYS: due shard. ARGV: now_ms, until_ms, limit
# Claim what is due by pushing it a visibility timeout into the future (a replica that dies
# holding a claim leaves the lease due again when the timeout passes). Returns
# {earliest score left in the shard or -1, id, id, ...}.
_CLAIM = Script("""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local out = {first[2] or '-1'}
for _, id in ipairs(ids) do out[#out + 1] = id end
return out
""")

# KEYS: task. ARGV: field (suffix + q | w), value — clear an audit marker once its record is
# in the chain (only that marker: a later commit's marker stays).
_CLEAR = Script("""
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
""")

# KEYS: counters hash, this minute's mint counter. ARGV: max live (0: none), max per minute
#       (0: none), counter ttl ms, index field ('' = none), index value
# Reserve one live lease (and one mint of this minute) if the quota allows: "ok" | "live" | "rate".
_RESERVE = Script("""
local live = tonumber(redis.call('HGET', KEYS[1], '#') or '0')
if tonumber(ARGV[1]) > 0 and live >= tonumber(ARGV[1]) then return 'live' end
if tonumber(ARGV[2]) > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then
  return 'rate'
end
redis.call('HINCRBY', KEYS[1], '#', 1)
if tonumber(ARGV[2]) > 0 then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[4], ARGV[5]) end
return 'ok'
""")

# KEYS: task. ARGV: suffix — take back a lease that was recorded but must not be (a quota
# refused it in the same round trip): its fields go, the task's live count drops.
_DISCARD = Script("""
local s = ARGV[1]
if redis.call('HGET', KEYS[1], s) ~= 'm' then return 0 end
local gone = {s}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.len(f) == 9 and string.sub(f, 1, 8) == s then gone[#gone + 1] = f end
end
redis.call('HDEL', KEYS[1], unpack(gone))
if redis.call('HINCRBY', KEYS[1], 'n', -1) <= 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
""")

# KEYS: due shard. ARGV: now_ms, claim_ms, id, id, ...
# Give back claims this replica will not work on (it drains): each lease still due at exactly
# the score our claim gave it is due now, so another replica takes it at once; one whose score
# moved (rescheduled, revoked, claimed again after the visibility timeout) is left alone.
# Returns how many were given back.
_UNCLAIM = Script("""
local n = 0
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
""")

# KEYS: task. ARGV: me, suffix, suffix, ... — drop this replica's revocation locks on these
# leases (a revocation it began and will not finish); another replica's lock stays.
_UNLOCK = Script("""
for i = 2, #ARGV do
  local s = ARGV[i]
  if redis.call('HGET', KEYS[1], s .. 'l') == ARGV[1] then
    redis.call('HDEL', KEYS[1], s .. 'l', s .. 'u')
  end
end
return 1
""")

SCRIPTS = (
    _CREATE,
    _ACTIVATE,
    _BEGIN,
    _FINISH,
    _FAIL,
    _COMPLETE,
    _CLAIM,
    _CLEAR,
    _RESERVE,
    _DISCARD,
    _UNCLAIM,
    _UNLOCK,
)
_MINUTE_MS = 60_000


class Limits(msgspec.Struct, frozen=True):
    """Quota limits for one counter (0: none)."""

    live: int = 0
    per_minute: int = 0


class Quota(msgspec.Struct, frozen=True):
    """The quotas a new lease counts against: its workload's and its policy owner's."""

    workload: Limits = Limits()
    owner: str | None = None
    owner_limits: Limits = Limits()


def policy_owner(lease: Lease) -> str | None:
    """The policy owner whose grant allowed the lease (``<owner>/<grant>``)."""
    return lease.grant.split("/", 1)[0] if lease.grant and "/" in lease.grant else None


def _principal(owner: str) -> Principal:
    """The lease's principal as kept after the mint: its id (claims are not stored)."""
    issuer, _, subject = owner.partition(":")
    return Principal(id=owner, issuer=issuer, subject=subject or owner)


#: Shards one claim round takes due leases from (LeaseStore.claim_due).
CLAIM_SHARDS = 16


class LeaseStore:
    """Lease and task records in Redis under ``prefix``. Works with a standalone Redis, a
    Redis Cluster client or fakeredis; values may come back as bytes or str."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        due_shards: int = DEFAULT_DUE_SHARDS,
        send: Callable[[list[Op]], Awaitable[list[Any]]] | None = None,
    ) -> None:
        """``send`` runs the write-ahead batch of a mint and the single reads and scripts of
        the revocation path (:meth:`batch`); the broker passes the audit log's group commit, so
        concurrent mints and revocations share round trips (default: a pipeline each)."""
        self.redis = redis
        self.keys = Keys(prefix, due_shards)
        self._send = send or (lambda ops: run(redis, ops))

    async def batch(self, ops: list[Op]) -> list[Any]:
        """``ops`` in the next shared round trip (the group commit when the broker wired one)."""
        return await self._send(ops)

    # -- ops (sent alone or in a commit with audit records) --------------------------------

    def create_op(
        self,
        lease: Lease,
        *,
        deadline_ms: int,
        bounded: bool,
        retention_ms: int,
        keep_principal: bool = False,
    ) -> Op:
        """``keep_principal``: keep the principal's claims (a lease that may be delegated on
        must give the next hop's decision its subject; others keep only the id)."""
        tkey, suffix = split_lease_id(lease.id)
        parent_suffix = ""
        if lease.parent is not None:
            parent_task, parent_suffix = split_lease_id(lease.parent)
            if parent_task != tkey:
                raise ValueError("a delegated lease lives in its parent's task")
        delegation = ""
        if keep_principal or lease.parent is not None or lease.actors:
            delegation = _enc.encode(
                _Delegation(parent=lease.parent, principal=lease.principal, actors=lease.actors)
            ).decode()
        facts = _pack.encode(
            _Facts(
                created_ms=to_ms(lease.issued_at),
                not_after_ms=to_ms(lease.not_after),
                issuer=lease.scope.issuer,
                actions=lease.scope.actions,
                grant=lease.grant,
                origin=lease.origin,
            )
        )
        return _CREATE.op(
            [self.keys.task(tkey)],
            [
                lease.owner,
                lease.task_id,
                lease.purpose,
                to_ms(lease.issued_at),
                suffix,
                facts,
                lease.scope.resource,
                _enc.encode(lease.cnf) if lease.cnf else "",
                deadline_ms,
                "1" if bounded else "0",
                to_ms(lease.not_after),
                retention_ms,
                parent_suffix,
                delegation,
            ],
        )

    def due_ops(self, lease_id: str, at_ms: int) -> list[Op]:
        """Put the lease on its due shard at ``at_ms``; the shard index learns the time if it
        is earlier than what it knew (``LT``: it never moves a shard later)."""
        n = self.keys.shard_of(lease_id)
        return [
            Op(command=("ZADD", self.keys.due_shard(n), at_ms, lease_id)),
            Op(command=("ZADD", self.keys.due, "LT", at_ms, n)),
        ]

    def undue_op(self, lease_id: str) -> Op:
        return Op(command=("ZREM", self.keys.due_shard(self.keys.shard_of(lease_id)), lease_id))

    def owner_ops(self, lease: Lease, quota: Quota | None = None) -> list[Op]:
        """The task in its owner's hash and one more live lease for the owner (and for the
        policy owner of its grant), each within its quota."""
        quota = quota or Quota()
        minute = to_ms(lease.issued_at) // _MINUTE_MS
        ops = [
            _RESERVE.op(
                [self.keys.owner(lease.owner), self.keys.owner_rate(lease.owner, minute)],
                [
                    quota.workload.live,
                    quota.workload.per_minute,
                    2 * _MINUTE_MS,
                    task_key_of(lease.id),
                    to_ms(lease.issued_at),
                ],
            )
        ]
        owner = policy_owner(lease)
        if owner is not None:
            ops.append(
                _RESERVE.op(
                    [self.keys.policy_owner(owner), self.keys.policy_owner_rate(owner, minute)],
                    [
                        quota.owner_limits.live,
                        quota.owner_limits.per_minute,
                        2 * _MINUTE_MS,
                        "",
                        "",
                    ],
                )
            )
        return ops

    def _release_ops(self, lease: Lease, reserved: list[str]) -> list[Op]:
        ops: list[Op] = []
        if "workload" in reserved:
            ops.append(Op(command=("HINCRBY", self.keys.owner(lease.owner), "#", -1)))
        owner = policy_owner(lease)
        if owner is not None and "owner" in reserved:
            ops.append(Op(command=("HINCRBY", self.keys.policy_owner(owner), "#", -1)))
        return ops

    def activate_op(self, lease_id: str, handle: Mapping[str, str], now_ms: int) -> Op:
        tkey, suffix = split_lease_id(lease_id)
        return _ACTIVATE.op(
            [self.keys.task(tkey)], [suffix, _enc.encode(dict(handle)) if handle else "", now_ms]
        )

    def finish_op(
        self, lease_id: str, *, me: str, rev: int, now_ms: int, final: LeaseState, retention_ms: int
    ) -> Op:
        tkey, suffix = split_lease_id(lease_id)
        return _FINISH.op(
            [self.keys.task(tkey)], [suffix, me, rev, now_ms, _CODE[final], retention_ms]
        )

    def settle_ops(self, lease: Lease, *, overdue: bool, retried: bool) -> list[Op]:
        """After a lease reached its final state: off the due index, one live lease less for
        its owner, off the overdue and retry sets."""
        ops = [self.undue_op(lease.id), *self._release_ops(lease, ["workload", "owner"])]
        if overdue:
            ops.append(Op(command=("SREM", self.keys.overdue, lease.id)))
        if retried:
            ops.append(Op(command=("SREM", self.keys.retry(lease.scope.issuer), lease.id)))
        return ops

    def clear_marker_op(self, lease_id: str, kind: str, at_ms: int) -> Op:
        """Clear the ``minted`` or ``revoked`` marker written at ``at_ms``."""
        tkey, suffix = split_lease_id(lease_id)
        field = suffix + ("q" if kind == "minted" else "w")
        return _CLEAR.op([self.keys.task(tkey)], [field, at_ms])

    # -- writes ----------------------------------------------------------------------------

    async def create(
        self,
        lease: Lease,
        *,
        due_ms: int,
        deadline_ms: int,
        bounded: bool,
        retention_ms: int,
        keep_principal: bool = False,
        quota: Quota | None = None,
    ) -> str:
        """Write-ahead, one round trip: the quota reservations (with the owner's index), the
        lease (state ``minting``) in its task and its due entry. Returns ``ok``,
        ``completed`` (the task is closed), ``deadline``, ``conflict``, ``exists``, ``parent``
        (the lease it is delegated from is not active in this task) or
        ``quota:<workload|owner>.<live_leases|mints_per_minute>``; on anything but ``ok``
        what was written is taken back."""
        reserve = self.owner_ops(lease, quota)
        ops = [
            *reserve,
            *self.due_ops(lease.id, due_ms),
            self.create_op(
                lease,
                deadline_ms=deadline_ms,
                bounded=bounded,
                retention_ms=retention_ms,
                keep_principal=keep_principal,
            ),
        ]
        results = await self._send(ops)
        verdicts = [opt_text(r) or "" for r in results[: len(reserve)]]
        status = opt_text(results[-1]) or "missing"
        named = list(zip(("workload", "owner"), verdicts, strict=False))
        reserved = [who for who, v in named if v == "ok"]
        refused = next(
            (
                f"quota:{who}.{'live_leases' if v == 'live' else 'mints_per_minute'}"
                for who, v in named
                if v != "ok"
            ),
            None,
        )
        if status == "ok" and refused is None:
            return "ok"
        undo = [self.undue_op(lease.id), *self._release_ops(lease, reserved)]
        if status == "ok":
            tkey, suffix = split_lease_id(lease.id)
            undo.append(_DISCARD.op([self.keys.task(tkey)], [suffix, retention_ms]))
        await run(self.redis, undo)
        return refused or status

    async def begin_revoke(
        self, lease_id: str, *, me: str, now_ms: int, lock_until_ms: int, trigger: str
    ) -> tuple[str, int]:
        tkey, suffix = split_lease_id(lease_id)
        (r,) = await self._send(
            [_BEGIN.op([self.keys.task(tkey)], [suffix, me, now_ms, lock_until_ms, trigger])]
        )
        status = text(r[0])
        return {"R": "revoked", "F": "failed"}.get(status, status), int(r[1])

    async def fail_revoke(
        self,
        lease_id: str,
        *,
        me: str,
        error: str,
        issuer: str,
        now_ms: int,
        overdue_after: int,
        overdue_after_ms: int,
    ) -> tuple[int, bool]:
        """Record a failed revocation (unlocking the lease) and remember it among the
        issuer's waiting revocations. Returns (attempts, newly overdue); (-1, False) when
        another replica holds the lease now."""
        tkey, suffix = split_lease_id(lease_id)
        fail = _FAIL.op(
            [self.keys.task(tkey)],
            [suffix, me, error, overdue_after, now_ms, overdue_after_ms],
        )
        r, _ = await run(
            self.redis, [fail, Op(command=("SADD", self.keys.retry(issuer), lease_id))]
        )
        return int(r[0]), bool(int(r[1]))

    async def waiting_revocations(self, issuer: str, limit: int = 10_000) -> list[str]:
        """Leases whose revocation at ``issuer`` failed and waits in backoff."""
        ids = await self.redis.srandmember(self.keys.retry(issuer), limit)
        return [x for x in (opt_text(i) for i in ids or []) if x]

    async def complete_task(
        self, owner: str, tkey: str, *, now_ms: int, retention_ms: int
    ) -> list[str] | None:
        r = await _COMPLETE(self.redis, [self.keys.task(tkey)], [owner, now_ms, retention_ms])
        if r is None:
            return None
        return sorted(f"{tkey}.{s}" for s in (opt_text(x) for x in r) if s)

    async def task_deadline_ms(self, tkey: str, owner: str) -> int | None:
        """The deadline of an existing task of ``owner``; None for a task not yet created."""
        owner_raw, deadline = await self.redis.hmget(self.keys.task(tkey), ["o", "d"])
        if opt_text(owner_raw) != owner or deadline is None:
            return None
        return int(text(deadline))

    async def release(self, claims: Mapping[str, int], now_ms: int, *, me: str) -> int:
        """Give back claimed leases this replica will not work on (``claims``: lease id → the
        due score its claim set), in one round trip: a lease whose due entry still holds that
        score is due at ``now_ms`` again (the shard index learns it), and ``me``'s revocation
        lock on it, if it took one, is dropped — so another replica revokes it at once instead
        of after the visibility timeout. Scripts by slot: one per due shard, one per task.
        Returns how many due entries were given back."""
        by_shard: dict[tuple[int, int], list[str]] = {}
        by_task: dict[str, list[str]] = {}
        for lease_id, claim_ms in claims.items():
            tkey, suffix = split_lease_id(lease_id)
            by_shard.setdefault((self.keys.shard_of(lease_id), claim_ms), []).append(lease_id)
            by_task.setdefault(tkey, []).append(suffix)
        if not claims:
            return 0
        shards = [
            _UNCLAIM.op([self.keys.due_shard(n)], [now_ms, claim_ms, *ids])
            for (n, claim_ms), ids in by_shard.items()
        ]
        ops = [
            *shards,
            *(Op(command=("ZADD", self.keys.due, "LT", now_ms, n)) for n, _ in by_shard),
            *(_UNLOCK.op([self.keys.task(t)], [me, *sfx]) for t, sfx in by_task.items()),
        ]
        results = await run(self.redis, ops)
        return sum(int(r) for r in results[: len(shards)])

    async def schedule(self, lease_id: str, at_ms: int) -> None:
        await self._send(self.due_ops(lease_id, at_ms))

    async def schedule_many(self, lease_ids: Iterable[str], at_ms: int) -> None:
        await run(self.redis, [op for lid in lease_ids for op in self.due_ops(lid, at_ms)])

    async def drop_due(self, lease_id: str) -> None:
        """Remove the due entry of a lease that needs nothing more."""
        await self._send([self.undue_op(lease_id)])

    async def mark_overdue(self, lease_id: str) -> None:
        await self.redis.sadd(self.keys.overdue, lease_id)

    async def forget_owner_task(self, owner: str, tkey: str) -> None:
        await self.redis.hdel(self.keys.owner(owner), tkey)

    # -- the due index -----------------------------------------------------------------------

    async def due_shards(self, now_ms: int, limit: int) -> list[int]:
        """Shards that may hold something due now (earliest first)."""
        rows = await self.redis.zrangebyscore(self.keys.due, "-inf", now_ms, start=0, num=limit)
        return [int(text(x)) for x in rows]

    async def claim_due(self, *, now_ms: int, until_ms: int, limit: int) -> list[str]:
        """Claim up to about ``limit`` due lease ids from the shards the index says are due
        earliest (one script per shard, sent in one round trip), then keep the index right.
        At most ``CLAIM_SHARDS`` shards a round: with leases spread over every shard, one
        lease from each of ``limit`` shards costs four commands a lease, a dozen from each of
        16 a third of one; the index puts the next-earliest shards first in the next round."""
        shards = await self.due_shards(now_ms, min(limit, CLAIM_SHARDS))
        if not shards:
            return []
        each = max(1, -(-limit // len(shards)))
        replies = await run(
            self.redis,
            [_CLAIM.op([self.keys.due_shard(n)], [now_ms, until_ms, each]) for n in shards],
        )
        claimed: list[str] = []
        earliest: dict[int, int] = {}
        for n, reply in zip(shards, replies, strict=True):
            earliest[n] = int(float(text(reply[0])))
            claimed.extend(text(x) for x in reply[1:])
        await self._reindex(earliest)
        return claimed

    async def _reindex(self, earliest: Mapping[int, int]) -> None:
        """Move each claimed shard's index entry to its new earliest time (or drop it), then
        read the shard again: a writer that added an earlier entry meanwhile has lowered the
        index already, or its entry is seen now and the index lowered again (``LT``)."""
        if not earliest:
            return
        move = [
            Op(command=("ZADD", self.keys.due, "XX", t, n))
            if t >= 0
            else Op(command=("ZREM", self.keys.due, n))
            for n, t in earliest.items()
        ]
        await run(self.redis, move)
        await self.refresh_index(list(earliest))

    async def refresh_index(self, shards: list[int] | None = None) -> None:
        """Lower each shard's index entry to its earliest due time (all shards: a safety net
        run now and then, for a writer that died between the shard and the index)."""
        shards = list(range(self.keys.due_shards)) if shards is None else shards
        firsts = await run(
            self.redis,
            [Op(command=("ZRANGE", self.keys.due_shard(n), 0, 0, "WITHSCORES")) for n in shards],
        )
        fix = [
            Op(command=("ZADD", self.keys.due, "LT", int(first[0][1]), n))
            for n, first in zip(shards, firsts, strict=True)
            if first
        ]
        await run(self.redis, fix)

    async def next_due_ms(self) -> int | None:
        r = await self.redis.zrange(self.keys.due, 0, 0, withscores=True)
        return int(r[0][1]) if r else None

    async def live_count(self) -> int:
        """Live leases (every live lease has one due entry), summed over the shards."""
        sizes = await run(
            self.redis,
            [Op(command=("ZCARD", self.keys.due_shard(n))) for n in range(self.keys.due_shards)],
        )
        return sum(int(x) for x in sizes)

    # -- reads -----------------------------------------------------------------------------

    async def load(self, lease_id: str) -> LeaseRecord | None:
        task = await self.load_task_by_key(task_key_of(lease_id))
        if task is None:
            return None
        for rec in task.leases:
            if rec.lease.id == lease_id:
                return rec
        return None

    async def load_many(self, lease_ids: list[str]) -> list[LeaseRecord | None]:
        if not lease_ids:
            return []
        tkeys = sorted({task_key_of(lid) for lid in lease_ids})
        rows = await run(self.redis, [Op(command=("HGETALL", self.keys.task(t))) for t in tkeys])
        found: dict[str, LeaseRecord] = {}
        for tkey, raw in zip(tkeys, rows, strict=True):
            task = _task(tkey, raw)
            if task is not None:
                found.update((r.lease.id, r) for r in task.leases)
        return [found.get(lid) for lid in lease_ids]

    async def load_task_by_key(self, tkey: str) -> TaskRecord | None:
        (raw,) = await self._send([Op(command=("HGETALL", self.keys.task(tkey)))])
        return _task(tkey, raw)

    async def load_task_with(
        self, tkey: str, ops: Sequence[Op]
    ) -> tuple[TaskRecord | None, list[Any]]:
        """The task's record and the results of ``ops`` (on keys of the task's slot), in one
        shared round trip (:meth:`batch`)."""
        raw, *results = await self._send([Op(command=("HGETALL", self.keys.task(tkey))), *ops])
        return _task(tkey, raw), results

    async def load_task(self, owner: str, tkey: str) -> TaskRecord | None:
        task = await self.load_task_by_key(tkey)
        if task is None or task.owner != owner:
            return None
        return task

    async def owner_tasks(self, owner: str, *, limit: int) -> list[str]:
        """The owner's task keys, newest first (at most ``limit``)."""
        raw = await self.redis.hgetall(self.keys.owner(owner))
        pairs = [(text(k), int(text(v))) for k, v in raw.items() if text(k) != "#"]
        pairs.sort(key=lambda kv: kv[1], reverse=True)
        return [k for k, _ in pairs[:limit]]

    async def owner_live(self, owner: str) -> int:
        return int(text(await self.redis.hget(self.keys.owner(owner), "#") or 0))

    async def load_tasks(self, tkeys: list[str]) -> list[TaskRecord | None]:
        rows = await run(self.redis, [Op(command=("HGETALL", self.keys.task(t))) for t in tkeys])
        return [_task(t, raw) for t, raw in zip(tkeys, rows, strict=True)]

    async def overdue_ids(self, limit: int) -> list[str]:
        _, ids = await self.redis.sscan(self.keys.overdue, 0, count=limit)
        return sorted(s for s in (opt_text(x) for x in ids) if s)[:limit]


def _task(tkey: str, raw: Mapping[Any, Any]) -> TaskRecord | None:
    if not raw:
        return None
    h: dict[str, Any] = {text(k): v for k, v in raw.items()}
    owner = text(h.get("o", b""))
    if not owner:
        return None
    suffixes = [k for k in h if len(k) == 8]
    leases = [r for r in (_lease(tkey, s, owner, h) for s in suffixes) if r is not None]
    completed = h.get("x")
    return TaskRecord(
        task_id=text(h.get("t", b"")),
        owner=owner,
        state="completed" if text(h.get("s", b"o")) == "c" else "open",
        created_at=from_ms(int(text(h.get("c", b"0")))),
        completed_at=from_ms(int(text(completed))) if completed is not None else None,
        deadline=from_ms(int(text(h["d"]))) if "d" in h else None,
        leases=sorted(leases, key=lambda r: r.created_ms),
    )


def _lease(tkey: str, s: str, owner: str, h: Mapping[str, Any]) -> LeaseRecord | None:
    state = _STATE.get(text(h[s]))
    packed = h.get(s + "m")
    if state is None or packed is None:
        return None
    facts = _facts.decode(packed if isinstance(packed, bytes) else packed.encode("latin-1"))
    handle_raw = h.get(s + "h")
    cnf_raw = h.get(s + "k")
    revoked = h.get(s + "X")
    trigger = opt_text(h.get(s + "T"))
    first_fail = h.get(s + "F")
    delegated = h.get(s + "d")
    dl = _delegation_dec.decode(delegated) if delegated else None
    lease = Lease(
        id=f"{tkey}.{s}",
        task_id=text(h.get("t", b"")),
        owner=owner,
        principal=dl.principal if dl is not None else _principal(owner),
        scope=Scope(issuer=facts.issuer, resource=text(h.get(s + "r", b"")), actions=facts.actions),
        issued_at=from_ms(facts.created_ms),
        not_after=from_ms(facts.not_after_ms),
        state=state,
        handle=_handle_dec.decode(handle_raw) if handle_raw else {},
        purpose=text(h.get("p", b"")),
        revoked_at=from_ms(int(text(revoked))) if revoked is not None else None,
        revoke_trigger=trigger,
        attempts=int(text(h.get(s + "A", b"0"))),
        overdue=opt_text(h.get(s + "O")) == "1",
        last_error=opt_text(h.get(s + "E")),
        cnf=msgspec.json.decode(cnf_raw, type=dict[str, str]) if cnf_raw else None,
        grant=facts.grant,
        origin=facts.origin,
        parent=dl.parent if dl is not None else None,
        actors=dl.actors if dl is not None else (),
    )
    return LeaseRecord(
        lease=lease,
        created_ms=facts.created_ms,
        rev=int(text(h.get(s + "v", b"0"))),
        trigger=trigger,
        prev_state=_prev(h.get(s + "P")),
        locker=opt_text(h.get(s + "l")),
        lock_until_ms=int(text(h.get(s + "u", b"0"))),
        first_fail_ms=int(text(first_fail)) if first_fail is not None else None,
        minted_pending_ms=_int(h.get(s + "q")),
        revoked_pending_ms=_int(h.get(s + "w")),
    )


def _int(raw: Any) -> int | None:
    value = opt_text(raw)
    return int(value) if value is not None and value.isdigit() else None


def _prev(raw: Any) -> str | None:
    code = opt_text(raw)
    return _STATE[code].value if code in _STATE else None

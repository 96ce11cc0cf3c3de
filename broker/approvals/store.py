"""Approval requests in Redis: atomic transitions (Lua), indexes, merge keys.

::

    {prefix}:{a:<id>}                 hash   doc (immutable JSON), state, decided_ms, slack ref,
                                             mint lock and planned/minted lease id
    {prefix}:{a:<id>}:reviews         list   one JSON Review per decision, in order
    {prefix}:{a:<id>}:approved_by     set    people who approved (no double votes)
    {prefix}:{approvals}:pending      zset   id -> expires_ms (the expiry sweep)
    {prefix}:{approvals}:unposted     zset   id -> next Slack attempt (ms)
    {prefix}:{o:<owner_key>}:approvals zset  the owner's pending ids -> expires_ms (the cap)
    {prefix}:{o:<owner_key>}:amerge:<digest>  an identical pending request's id

Every transition of one request is one script over its own slot, so two approvers clicking at
the same moment cannot both complete the quorum twice, and a decision after expiry is refused.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from broker.approvals.model import ApprovalState, ApprovalView, Review
from broker.clock import from_ms, to_ms
from broker.leases.keys import owner_key
from broker.state import opt_text

__all__ = ["ApprovalStore", "StoredApproval"]

_enc = msgspec.json.Encoder()
_view_dec = msgspec.json.Decoder(ApprovalView)
_review_dec = msgspec.json.Decoder(Review)

# KEYS: hash, reviews, approved_by. ARGV: person, decision, review_json, now_ms
# Returns {result, count}: pending | approved | denied | expired | duplicate | final:<state>
_REVIEW = """
local h = redis.call('HMGET', KEYS[1], 'state', 'expires_ms', 'quorum')
if not h[1] then return {'missing', 0} end
if h[1] ~= 'pending' then return {'final:' .. h[1], 0} end
if tonumber(ARGV[4]) >= tonumber(h[2]) then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'decided_ms', h[2])
  return {'expired', 0}
end
if ARGV[2] == 'deny' then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('HSET', KEYS[1], 'state', 'denied', 'decided_ms', ARGV[4])
  return {'denied', 0}
end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return {'duplicate', 0} end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[3])
local n = redis.call('SCARD', KEYS[3])
if n >= tonumber(h[3]) then
  redis.call('HSET', KEYS[1], 'state', 'approved', 'decided_ms', ARGV[4])
  return {'approved', n}
end
return {'pending', n}
"""

# KEYS: hash. ARGV: to_state (expired|cancelled), now_ms, only_if_due ("1": expiry sweep)
_END = """
local h = redis.call('HMGET', KEYS[1], 'state', 'expires_ms')
if not h[1] then return 'missing' end
if h[1] ~= 'pending' then return 'final:' .. h[1] end
if ARGV[3] == '1' and tonumber(ARGV[2]) < tonumber(h[2]) then return 'not_due' end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'decided_ms', ARGV[2])
return 'ok'
"""

# KEYS: hash. ARGV: me, now_ms, lock_until_ms, planned_lease_id
# Claim the right to mint an approved request. Returns {status, previous planned lease id}:
# ok | busy | minted | not_approved. A previous planned lease means an earlier minter died:
# the caller revokes it before minting again, so at most one credential stays alive.
_CLAIM_MINT = """
local h = redis.call('HMGET', KEYS[1], 'state', 'lease_id', 'minter', 'mint_until', 'planned')
if h[1] ~= 'approved' then return {'not_approved', ''} end
if h[2] then return {'minted', h[2]} end
if h[3] and tonumber(h[4]) > tonumber(ARGV[2]) then return {'busy', ''} end
redis.call('HSET', KEYS[1], 'minter', ARGV[1], 'mint_until', ARGV[3], 'planned', ARGV[4])
return {'ok', h[5] or ''}
"""

# KEYS: hash. ARGV: me, lease_id (empty: the mint failed, release the claim)
_MINTED = """
if redis.call('HGET', KEYS[1], 'minter') ~= ARGV[1] then return 'lost' end
redis.call('HDEL', KEYS[1], 'minter', 'mint_until')
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'lease_id', ARGV[2]) end
return 'ok'
"""


class StoredApproval(msgspec.Struct, frozen=True, kw_only=True):
    view: ApprovalView
    merge_key: str


class ApprovalStore:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.pending = f"{prefix}:{{approvals}}:pending"
        self.unposted = f"{prefix}:{{approvals}}:unposted"
        self._review = redis.register_script(_REVIEW)
        self._end = redis.register_script(_END)
        self._claim_mint = redis.register_script(_CLAIM_MINT)
        self._minted = redis.register_script(_MINTED)

    def _h(self, aid: str) -> str:
        return f"{self.prefix}:{{a:{aid}}}"

    def _owner_index(self, owner: str) -> str:
        return f"{self.prefix}:{{o:{owner_key(owner)}}}:approvals"

    def _merge(self, owner: str, digest: str) -> str:
        return f"{self.prefix}:{{o:{owner_key(owner)}}}:amerge:{digest}"

    # -- open ------------------------------------------------------------------------------

    async def reserve_merge(self, owner: str, digest: str, aid: str, ttl_ms: int) -> str | None:
        """Claim the merge key for a new request; returns the id of an identical pending
        request if there is one (then nothing is written)."""
        key = self._merge(owner, digest)
        if await self.redis.set(key, aid, nx=True, px=max(ttl_ms, 1)):
            return None
        existing = await self.redis.get(key)
        return opt_text(existing)

    async def release_merge(self, owner: str, digest: str, aid: str) -> None:
        key = self._merge(owner, digest)
        if opt_text(await self.redis.get(key)) == aid:
            await self.redis.delete(key)

    async def pending_count(self, owner: str, now_ms: int) -> int:
        idx = self._owner_index(owner)
        await self.redis.zremrangebyscore(idx, "-inf", now_ms)
        return int(await self.redis.zcard(idx))

    async def create(self, view: ApprovalView, *, digest: str, retention_ms: int) -> None:
        h = self._h(view.id)
        expires_ms = to_ms(view.expires_at)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                h,
                mapping={
                    "doc": _enc.encode(view),
                    "state": view.state.value,
                    "expires_ms": expires_ms,
                    "quorum": view.quorum,
                    "merge": digest,
                },
            )
            pipe.pexpire(h, retention_ms)
            pipe.zadd(self.pending, {view.id: expires_ms})
            pipe.zadd(self._owner_index(view.owner), {view.id: expires_ms})
            pipe.zadd(self.unposted, {view.id: 0})
            await pipe.execute()

    # -- read ------------------------------------------------------------------------------

    async def load(self, aid: str) -> StoredApproval | None:
        h = self._h(aid)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(h)
            pipe.lrange(f"{h}:reviews", 0, -1)
            raw, reviews = await pipe.execute()
        if not raw:
            return None
        f = {opt_text(k): opt_text(v) for k, v in raw.items()}
        view = _view_dec.decode(f.get("doc") or b"")
        decided = f.get("decided_ms")
        changes: dict[str, Any] = {
            "state": ApprovalState(f.get("state") or "pending"),
            "reviews": tuple(_review_dec.decode(r) for r in reviews),
            "decided_at": from_ms(int(decided)) if decided else None,
            "lease_id": f.get("lease_id"),
            "slack_ts": f.get("slack_ts"),
        }
        if f.get("slack_channel"):
            changes["channel"] = f.get("slack_channel")
        return StoredApproval(
            view=msgspec.structs.replace(view, **changes), merge_key=f.get("merge") or ""
        )

    async def pending_ids(self, limit: int = 1000) -> list[str]:
        return [
            s
            for s in (opt_text(x) for x in await self.redis.zrange(self.pending, 0, limit - 1))
            if s
        ]

    async def owner_pending_ids(self, owner: str, limit: int = 1000) -> list[str]:
        ids = await self.redis.zrange(self._owner_index(owner), 0, limit - 1)
        return [s for s in (opt_text(x) for x in ids) if s]

    async def due_expiry(self, now_ms: int, limit: int = 100) -> list[str]:
        ids = await self.redis.zrangebyscore(self.pending, "-inf", now_ms, start=0, num=limit)
        return [s for s in (opt_text(x) for x in ids) if s]

    async def due_posts(self, now_ms: int, limit: int = 20) -> list[str]:
        ids = await self.redis.zrangebyscore(self.unposted, "-inf", now_ms, start=0, num=limit)
        return [s for s in (opt_text(x) for x in ids) if s]

    # -- transitions -----------------------------------------------------------------------

    async def review(self, aid: str, review: Review, now_ms: int) -> tuple[str, int]:
        h = self._h(aid)
        r = await self._review(
            keys=[h, f"{h}:reviews", f"{h}:approved_by"],
            args=[review.person, review.decision, _enc.encode(review), now_ms],
        )
        return opt_text(r[0]) or "missing", int(r[1])

    async def end(self, aid: str, state: ApprovalState, now_ms: int, *, only_if_due: bool) -> str:
        r = await self._end(
            keys=[self._h(aid)], args=[state.value, now_ms, "1" if only_if_due else "0"]
        )
        return opt_text(r) or "missing"

    async def finished(self, view: ApprovalView) -> None:
        """Drop a decided request from the pending indexes. Its merge key stays until it
        expires (or the credential is minted), so identical requests see the outcome."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.pending, view.id)
            pipe.zrem(self._owner_index(view.owner), view.id)
            await pipe.execute()

    async def set_slack(self, aid: str, channel: str, ts: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._h(aid), mapping={"slack_channel": channel, "slack_ts": ts})
            pipe.zrem(self.unposted, aid)
            await pipe.execute()

    async def retry_post(self, aid: str, at_ms: int) -> None:
        await self.redis.zadd(self.unposted, {aid: at_ms})

    async def drop_post(self, aid: str) -> None:
        await self.redis.zrem(self.unposted, aid)

    async def claim_mint(
        self, aid: str, *, me: str, now_ms: int, lock_until_ms: int, planned: str
    ) -> tuple[str, str]:
        r = await self._claim_mint(keys=[self._h(aid)], args=[me, now_ms, lock_until_ms, planned])
        return opt_text(r[0]) or "not_approved", opt_text(r[1]) or ""

    async def minted(self, aid: str, *, me: str, lease_id: str) -> str:
        return opt_text(await self._minted(keys=[self._h(aid)], args=[me, lease_id])) or "lost"

    async def seen_slack_request(self, fingerprint: str, ttl_ms: int) -> bool:
        """Replay protection: True if this signed Slack request was seen before."""
        key = f"{self.prefix}:{{slack}}:seen:{fingerprint}"
        return not await self.redis.set(key, "1", nx=True, px=ttl_ms)

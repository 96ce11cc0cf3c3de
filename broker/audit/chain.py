"""The hash chain: one sequence of audit records in Redis, shared by every broker replica.

A record is an :class:`~broker.audit.log.AuditEvent` with three more fields:

- ``seq``: 1, 2, 3 … without gaps;
- ``prev``: the ``hash`` of record ``seq - 1`` (:data:`GENESIS`, 64 zeros, for seq 1);
- ``hash``: SHA-256 (hex) over the record's canonical encoding without ``hash``: JSON with the
  keys sorted at every level and no whitespace, as ``msgspec.json.Encoder(order="sorted")``
  writes it (:func:`canonical`). The record is stored in exactly that encoding with ``hash``
  added, so the verifier hashes what it reads.

Keys (one hash tag, ``{audit}``, so every script runs on one Redis Cluster slot)::

    {prefix}:{audit}:head            hash    seq, hash (the chain's head), cp_seq, cp_ms
    {prefix}:{audit}:stream          stream  one entry per record, id "<seq>-0", field r = JSON
    {prefix}:{audit}:cursor:<sink>   string  the last seq delivered to a sink
    {prefix}:{audit}:lock:<sink>     hash    owner, until (ms): who delivers to the sink now
    {prefix}:{audit}:sinks           hash    sink name → when a replica last said it feeds it (ms)

Appending is a compare-and-set: Python reads the head it last saw, hashes the new records
(Lua has no SHA-256), and one script checks the head is unchanged, XADDs the records and moves
the head; on a conflict the script answers with the current head and Python rebuilds the batch.
Events emitted while a write is in flight are queued and go in the next script call together
(group commit), so a busy replica costs at most one round trip per event and usually less; the
first append of a process costs one more (learning the head).

A commit may carry *state ops* (:class:`broker.state.scripts.Op`: a lease's activation, its
revocation's settlement) with its records: they go in the same pipeline as the append, ahead of
it, so a state change and its record reach Redis in one round trip, batched with every other
commit waiting. A conflict repeats only the append. *Clean-up ops* (clearing a lease's "record
pending" marker once the record is in) ride along with the next batch.

Checkpoints: after a record, when ``checkpoint_every`` records have passed since the last
checkpoint or ``checkpoint_interval`` has passed on the injected clock, the chain appends an
``audit.checkpoint`` record whose ``detail.jws`` is a JWS over ``{"seq": s, "head": h}`` — the
seq and hash of the record just before it (so ``h`` equals the checkpoint's own ``prev``). The
decision is made against the head the compare-and-set is made against, so two replicas never
write two checkpoints for the same stretch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from broker.audit.log import CHECKPOINT, AuditEvent
from broker.audit.signing import CheckpointSigner
from broker.clock import Clock, to_ms
from broker.errors import ConfigError, StoreUnavailable
from broker.state import text
from broker.state.scripts import Op, ReplicasBehind, ReplicaWait, Script, run

__all__ = [
    "CHECKPOINT",
    "GENESIS",
    "AuditChain",
    "ChainKeys",
    "ChainRecord",
    "canonical",
    "read_chain",
    "record_hash",
]

log = logging.getLogger("jit.audit")

#: ``prev`` of the first record.
GENESIS: Final = "0" * 64

_canon = msgspec.json.Encoder(order="sorted")
_SINK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def canonical(obj: Any) -> bytes:
    """Sorted keys at every level, no whitespace, UTF-8 (msgspec ``order="sorted"``)."""
    return _canon.encode(obj)


def record_hash(record: Mapping[str, Any] | AuditEvent) -> str:
    """SHA-256 (hex) of a record's canonical encoding without its ``hash`` field. Takes the
    decoded JSON object (what a verifier reads) or the struct (what the broker writes): both
    give the same bytes."""
    if isinstance(record, Mapping):
        body: Any = {k: v for k, v in record.items() if k != "hash"}
    else:
        body = msgspec.structs.replace(record, hash=None)
    return hashlib.sha256(canonical(body)).hexdigest()


class ChainKeys:
    """The Redis keys of the audit chain under one key prefix (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c in prefix for c in "{} "):
            raise ConfigError(f"invalid key prefix {prefix!r}")
        self.prefix = prefix
        self.head = f"{prefix}:{{audit}}:head"
        self.stream = f"{prefix}:{{audit}}:stream"
        self.sinks = f"{prefix}:{{audit}}:sinks"

    def cursor(self, sink: str) -> str:
        return f"{self.prefix}:{{audit}}:cursor:{check_sink_name(sink)}"

    def lock(self, sink: str) -> str:
        return f"{self.prefix}:{{audit}}:lock:{check_sink_name(sink)}"


def check_sink_name(name: str) -> str:
    if not _SINK_NAME.match(name):
        raise ConfigError(f"audit sink name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    return name


class ChainRecord(msgspec.Struct, frozen=True):
    """One record as stored in the stream: its seq and its JSON, byte for byte."""

    seq: int
    data: bytes


# KEYS: head, stream
# ARGV: expected seq, expected hash, maxlen, new seq, new hash, cp_seq, cp_ms, then pairs of
#       (entry id, record JSON)
# -> {1} appended | {0, seq, hash, cp_seq, cp_ms} the head did not match (nothing written)
_APPEND_SOURCE = (
    """
local h = redis.call('HMGET', KEYS[1], 'seq', 'hash', 'cp_seq', 'cp_ms')
local seq, hash, cps, cpm = h[1], h[2], h[3], h[4]
if not seq then
  -- No head (deleted or evicted) but maybe a stream: continue from its last record, never fork.
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last > 0 then
    seq = string.match(last[1][1], '^(%d+)-')
    hash = cjson.decode(last[1][2][2])['hash']
  else
    seq = '0'
    hash = '"""
    + GENESIS
    + """'
  end
  cps = false
  cpm = false
end
if seq ~= ARGV[1] or hash ~= ARGV[2] then
  return {0, seq, hash, cps or '', cpm or ''}
end
for i = 8, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], ARGV[i], 'r', ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'seq', ARGV[4], 'hash', ARGV[5], 'cp_seq', ARGV[6], 'cp_ms', ARGV[7])
return {1}
"""
)
_APPEND = Script(_APPEND_SOURCE)


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str
    cp_seq: int  # seq of the last checkpoint record (0: none yet)
    cp_ms: int | None  # when it was written (None: unknown; counts from now)


@dataclass
class _Item:
    """A queued commit: events to append (None: "a checkpoint if one is due"), state ops to
    send with them, and the future that gets (records, op results)."""

    events: list[AuditEvent] | None
    ops: list[Op]
    fut: asyncio.Future[tuple[list[AuditEvent], list[Any]]]


class AuditChain:
    """Appends events to the shared chain. See the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        clock: Clock,
        signer: CheckpointSigner,
        *,
        checkpoint_every: int = 1000,
        checkpoint_interval: timedelta = timedelta(minutes=1),
        stream_maxlen: int = 1_000_000,
        max_batch: int = 256,
        max_attempts: int = 100,
        wait: ReplicaWait | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ConfigError("audit.checkpoint_every must be at least 1")
        if checkpoint_interval <= timedelta(0):
            raise ConfigError("audit.checkpoint_interval must be positive")
        if stream_maxlen < 1000:
            raise ConfigError("audit.stream_maxlen must be at least 1000")
        if max_batch < 1 or max_attempts < 1:
            raise ValueError("max_batch and max_attempts must be at least 1")
        self.redis = redis
        self.keys = ChainKeys(prefix)
        self.clock = clock
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.stream_maxlen = stream_maxlen
        self.max_batch = max_batch
        self.max_attempts = max_attempts
        # wait_replicas (docs/deploy.md "Redis topologies"): every batch ends with WAIT.
        self.wait = wait
        self._head: _Head | None = None  # the head as last seen; None: ask Redis
        self._queue: deque[_Item] = deque()
        self._cleanup: list[Op] = []  # ride along with the next batch
        self._writer: asyncio.Task[None] | None = None
        self.conflicts = 0  # compare-and-set retries so far (for metrics and tests)

    # -- public ---------------------------------------------------------------------------

    async def append(self, event: AuditEvent) -> list[AuditEvent]:
        """Chain one event. Returns its record, followed by a checkpoint record when one fell
        due right after it. Raises :class:`StoreUnavailable` when Redis does not take it."""
        records, _ = await self._submit([event], [])
        return records

    async def commit(
        self, events: Sequence[AuditEvent], ops: Sequence[Op] = (), cleanup: Sequence[Op] = ()
    ) -> tuple[list[AuditEvent], list[Any]]:
        """Send ``ops`` and chain ``events`` in one round trip (shared with every commit
        waiting). Returns the records (checkpoints included) and one result per op.
        ``cleanup`` ops are sent with a later batch, once the records are in."""
        records, results = await self._submit(list(events), list(ops))
        self._cleanup.extend(cleanup)
        return records, results

    async def flush(self) -> None:
        """Send the clean-up ops waiting for a batch now (one round trip, if there are any)."""
        if self._cleanup:
            await self._submit(None, [])

    async def checkpoint_if_due(self) -> AuditEvent | None:
        """Append a checkpoint when records are waiting for one and ``checkpoint_interval`` has
        passed (:meth:`AuditLog.run` calls this, so a quiet chain's tail still gets signed).
        Clean-up ops waiting for a batch go with it."""
        records, _ = await self._submit(None, [])
        return records[0] if records else None

    async def head(self) -> tuple[int, str]:
        """The chain's head ``(seq, hash)`` as Redis has it now (``(0, GENESIS)`` if empty)."""
        head = await self._sync(remember=False)
        return head.seq, head.hash

    def jwks(self) -> dict[str, Any]:
        return self.signer.jwks()

    async def aclose(self) -> None:
        writer = self._writer
        if writer is not None and not writer.done():
            await asyncio.wait({writer}, timeout=10)
        if self._cleanup:  # markers whose records are in: clear them before leaving
            with contextlib.suppress(StoreUnavailable, RedisError, RedisClusterException, OSError):
                await asyncio.wait_for(self._submit(None, []), timeout=5)

    # -- the writer -------------------------------------------------------------------------

    async def _submit(
        self, events: list[AuditEvent] | None, ops: list[Op]
    ) -> tuple[list[AuditEvent], list[Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[list[AuditEvent], list[Any]]] = loop.create_future()
        # Retrieve the outcome even when the caller stopped waiting (no "never retrieved").
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(_Item(events, ops, fut))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._drain(), name="jit-audit-chain")
        # The caller may be cancelled (which cancels ``fut``); the item stays queued, the write
        # goes on and the writer skips settling a future that is already done. ``fut`` is a
        # plain future that only the writer settles, so no shield is needed.
        return await fut

    async def _drain(self) -> None:
        """The only writer of this instance: takes queued items in order, a batch at a time."""
        while self._queue:
            batch: list[_Item] = []
            size = 0
            while self._queue and (not batch or size < self.max_batch):
                item = self._queue.popleft()
                batch.append(item)
                size += max(1, len(item.events or ()))
            try:
                outcomes = await self._write(batch)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.fut.done():
                        item.fut.set_exception(
                            StoreUnavailable("the audit chain writer was stopped")
                        )
                raise
            except Exception as exc:
                for item in batch:
                    if not item.fut.done():
                        item.fut.set_exception(_store_error(exc))
                continue
            for item, outcome in zip(batch, outcomes, strict=True):
                if not item.fut.done():
                    item.fut.set_result(outcome)

    async def _sync(self, *, remember: bool = True) -> _Head:
        """Learn the head from Redis (a compare-and-set that cannot match writes nothing)."""
        reply = await _APPEND(self.redis, [self.keys.head, self.keys.stream], ["-1", "", 0])
        head = self._parse_head(reply)
        if remember:  # only the writer caches what it builds on
            self._head = head
        return head

    def _parse_head(self, reply: Sequence[Any]) -> _Head:
        _, seq, hash_, cp_seq, cp_ms = (text(v) for v in reply)
        s = int(seq)
        return _Head(
            seq=s,
            hash=hash_,
            cp_seq=int(cp_seq) if cp_seq else 0,
            cp_ms=int(cp_ms) if cp_ms else None,
        )

    async def _write(self, items: Sequence[_Item]) -> list[tuple[list[AuditEvent], list[Any]]]:
        """Send the batch's ops (and waiting clean-ups) with one append; repeat only the
        append on a conflict. Returns (records, op results) per item."""
        keys = [self.keys.head, self.keys.stream]
        ops = [op for item in items for op in item.ops]
        cleanup, self._cleanup = self._cleanup, []
        try:
            head = self._head or await self._sync()
            op_results: list[Any] = []
            for attempt in range(self.max_attempts):
                groups, new_head, args = self._build([i.events for i in items], head)
                pending = [*cleanup, *ops] if attempt == 0 else []
                append = [_APPEND.op(keys, args)] if new_head is not None else []
                if not pending and not append:  # only ticks, and no checkpoint is due
                    return [(g, []) for g in groups]
                results = await run(self.redis, [*pending, *append], wait=self.wait)
                if attempt == 0:
                    op_results = results[len(cleanup) : len(cleanup) + len(ops)]
                if not append or int(results[-1][0]) == 1:
                    if new_head is not None:
                        self._head = new_head
                    return self._split(items, groups, op_results)
                self.conflicts += 1
                head = self._head = self._parse_head(results[-1])
        except (RedisError, RedisClusterException, OSError, ReplicasBehind):
            self._head = None  # the write may or may not have happened: ask next time
            raise
        self._head = None
        raise StoreUnavailable(
            f"audit chain: gave up after {self.max_attempts} conflicting appends"
        )

    @staticmethod
    def _split(
        items: Sequence[_Item], groups: list[list[AuditEvent]], op_results: list[Any]
    ) -> list[tuple[list[AuditEvent], list[Any]]]:
        out: list[tuple[list[AuditEvent], list[Any]]] = []
        at = 0
        for item, group in zip(items, groups, strict=True):
            out.append((group, op_results[at : at + len(item.ops)]))
            at += len(item.ops)
        return out

    def _build(
        self, items: Sequence[list[AuditEvent] | None], head: _Head
    ) -> tuple[list[list[AuditEvent]], _Head | None, list[Any]]:
        """The records for ``items`` (each a list of events, or None for a checkpoint tick) on
        top of ``head``: per item its group of records, the new head (None if nothing is to be
        written) and the script's ARGV."""
        now = self.clock.now()
        now_ms = to_ms(now)
        every = self.checkpoint_every
        interval_ms = int(self.checkpoint_interval.total_seconds() * 1000)
        seq, prev = head.seq, head.hash
        cp_seq = head.cp_seq
        cp_ms = head.cp_ms if head.cp_ms is not None else now_ms
        entries: list[Any] = []
        groups: list[list[AuditEvent]] = []

        def add(event: AuditEvent) -> AuditEvent:
            nonlocal seq, prev
            seq += 1
            unhashed = msgspec.structs.replace(event, seq=seq, prev=prev, hash=None)
            record = msgspec.structs.replace(unhashed, hash=record_hash(unhashed))
            entries.extend((f"{seq}-0", canonical(record)))
            prev = record.hash or ""
            return record

        def checkpoint() -> AuditEvent:
            nonlocal cp_seq, cp_ms
            jws = self.signer.sign(seq, prev)
            record = add(
                AuditEvent(type=CHECKPOINT, time=now, detail={"jws": jws, "kid": self.signer.kid})
            )
            cp_seq, cp_ms = seq, now_ms
            return record

        def due() -> bool:
            return seq > cp_seq and (seq - cp_seq >= every or now_ms - cp_ms >= interval_ms)

        for item in items:
            if item is None:
                groups.append([checkpoint()] if due() else [])
                continue
            group: list[AuditEvent] = []
            for event in item:
                group.append(add(event))
                if due():
                    group.append(checkpoint())
            groups.append(group)
        if not entries:
            return groups, None, []
        args: list[Any] = [
            str(head.seq),
            head.hash,
            self.stream_maxlen,
            str(seq),
            prev,
            str(cp_seq),
            str(cp_ms),
            *entries,
        ]
        return groups, _Head(seq, prev, cp_seq, cp_ms), args


def _store_error(exc: Exception) -> Exception:
    if isinstance(exc, StoreUnavailable):
        return StoreUnavailable(exc.message)
    if isinstance(exc, RedisError | RedisClusterException | OSError):
        return StoreUnavailable(f"audit chain: Redis unavailable ({type(exc).__name__})")
    return exc


async def read_chain(
    redis: aioredis.Redis,
    prefix: str,
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    page: int = 1000,
) -> AsyncIterator[ChainRecord]:
    """The records in the stream from ``from_seq`` up to ``to_seq`` (default: the head when
    the read starts, so a running broker does not make the read endless), in order."""
    keys = ChainKeys(prefix)
    if to_seq is None:
        raw = await redis.hget(keys.head, "seq")
        to_seq = int(text(raw)) if raw is not None else 0
    start = max(from_seq, 1)
    while start <= to_seq:
        entries = await redis.xrange(keys.stream, f"{start}-0", f"{to_seq}-0", count=page)
        if not entries:
            return
        for entry_id, fields in entries:
            seq = int(text(entry_id).split("-", 1)[0])
            start = seq + 1
            data = (fields or {}).get(b"r", (fields or {}).get("r"))
            if data is not None:
                yield ChainRecord(seq, data if isinstance(data, bytes) else data.encode())

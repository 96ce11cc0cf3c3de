"""Durable audit sinks fed from the chain's Redis stream, and the loop that feeds them.

The stream is the buffer, not the archive: a sink that is down falls behind and catches up when
it is back; a record leaves the stream once every registered sink has taken it (below); nothing
is dropped unless the stream is trimmed by ``audit.stream_maxlen`` (the cap that still holds)
past records a sink has not taken yet (logged as an error and counted in
:attr:`AuditDelivery.lost`).

Trimming: every replica that runs the delivery loop registers its sinks in the ``sinks`` hash
(name → the time it last said so, on the injected clock, refreshed every minute). After it
moved a cursor, the deliverer runs one script (every key in the ``{audit}`` slot) that takes the
smallest cursor over every registered sink — a sink without a cursor counts as 0 and holds
everything back — and ``XTRIM``s the stream below it with ``MINID``, always keeping the newest
record (the chain's fallback head). A sink that no replica has registered for ``forget_after``
(it was removed from every replica's configuration) stops holding records back. Without durable
sinks there is no delivery loop and no such trimming: ``stream_maxlen`` alone bounds the stream.

Per sink, Redis holds a cursor (the last seq delivered) and a lock with a visibility timeout
(``owner``, ``until`` on the injected clock, like the reaper's claims). Every replica may run
:meth:`AuditDelivery.run`; for each sink only the lock holder reads and delivers, one batch at
a time, and advances the cursor after the sink confirmed — so records reach a sink in order and
once. A replica that dies holding the lock is replaced after the lock's ``until``. The cursor
moves only if the lock is still the deliverer's; if a delivery outlived the lock and another
replica took over, that batch may arrive twice (each record carries its ``seq``: receivers can
drop repeats; the webhook's ``Idempotency-Key`` names the batch).

Sinks:

- :class:`JsonLinesFileSink`: appends the records, byte for byte, one per line (mode 0600,
  fsync per batch). The file is a chain ``jit audit verify`` checks. It skips records it already
  holds (it reads the last seq from the file's tail), so a crash between the write and the
  cursor update never duplicates a line; a torn last line is cut off and rewritten. It refuses
  records that do not continue the chain already in the file (a chain restarted after Redis lost
  its data, a file from before the chain): the sink then fails visibly until the file is moved.
- :class:`WebhookSink`: POSTs a JSON array of records (``audit.webhooks``), with a bearer token
  from ``token_file``; anything but a 2xx is a failure, retried with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
import msgspec
import redis.asyncio as aioredis

from broker.audit.chain import ChainKeys, ChainRecord, check_sink_name
from broker.clock import Clock, to_ms
from broker.config import WebhookSinkSettings
from broker.errors import ConfigError
from broker.replica import new_replica_id
from broker.retry import backoff
from broker.state import text
from broker.state.scripts import Script
from broker.types import Secret
from broker.urls import check_url

__all__ = [
    "AuditDelivery",
    "JsonLinesFileSink",
    "SinkError",
    "StreamSink",
    "WebhookSink",
]

log = logging.getLogger("jit.audit")

_MAX_BATCH: Final = 10_000


class SinkError(Exception):
    """A sink did not take a batch. The message names the sink and the cause, never a secret."""


class StreamSink(Protocol):
    """A durable sink fed from the stream. ``deliver`` returns only when the batch is safe."""

    name: str  # unique; names the cursor and the lock in Redis
    batch_size: int  # most records per deliver() call
    lease: timedelta  # how long one deliver() may take before another replica may take over

    async def deliver(self, records: Sequence[ChainRecord]) -> None: ...

    async def aclose(self) -> None: ...


# -- the JSON-lines file -------------------------------------------------------------------


class JsonLinesFileSink:
    """One record per line, exactly as chained. See the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "file",
        batch_size: int = 500,
        lease: timedelta = timedelta(seconds=30),
    ) -> None:
        self.name = check_sink_name(name)
        if not 1 <= batch_size <= _MAX_BATCH:
            raise ConfigError(f"audit file sink: batch_size must be 1..{_MAX_BATCH}")
        self.batch_size = batch_size
        self.lease = lease
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"audit.file {self.path}: cannot open ({exc.strerror})") from None
        self._fd = fd

    async def deliver(self, records: Sequence[ChainRecord]) -> None:
        await asyncio.to_thread(self._deliver, records)

    def _deliver(self, records: Sequence[ChainRecord]) -> None:
        try:
            fresh = self._fresh(records)
            if fresh:
                os.write(self._fd, b"".join(r.data + b"\n" for r in fresh))
                os.fsync(self._fd)
        except OSError as exc:
            raise SinkError(f"audit file {self.path}: {exc.strerror}") from None

    def _fresh(self, records: Sequence[ChainRecord]) -> list[ChainRecord]:
        """The records the file does not hold yet. Refuses (SinkError) to append a chain that
        does not continue the file's: a chain reset (Redis lost its data) or a file that is not
        a chain would otherwise be mixed into one unverifiable file, or silently skipped."""
        if not records:
            return []
        tail = self._tail()
        if tail is None:
            return list(records)
        last, last_hash = tail
        first = records[0]
        if first.seq > last:
            if first.seq == last + 1 and _field_of(first, "prev") != last_hash:
                raise self._foreign(last)
            return list(records)
        # A batch delivered again (a crash between the write and the cursor update): the file
        # must hold the very same records; skip those.
        probe = min(records[-1].seq, last)
        mine = next((r for r in records if r.seq == probe), None)
        if mine is None or self._hash_at(probe) != _field_of(mine, "hash"):
            raise self._foreign(probe)
        return [r for r in records if r.seq > last]

    def _foreign(self, seq: int) -> SinkError:
        return SinkError(
            f"audit file {self.path}: the chain does not continue the file's at seq {seq} (was "
            "the chain reset, or is this another chain's file?); move the file aside"
        )

    def _tail(self) -> tuple[int, Any] | None:
        """``(seq, hash)`` of the file's last complete line; None for an empty file. A torn
        last line (a crash mid-write, never confirmed) is cut off first."""
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            cut = self._newline_before(size) + 1
            log.warning("audit file %s: cutting off a torn last line", self.path)
            os.ftruncate(self._fd, cut)
            size = cut
        if size == 0:
            return None
        start = self._newline_before(size - 1) + 1
        seq, hash_ = _seq_hash(os.pread(self._fd, size - 1 - start, start))
        if seq is None:
            raise SinkError(
                f"audit file {self.path}: its last line is not a chain record; move the file "
                "aside (a file from before the hash chain?)"
            )
        return seq, hash_

    def _hash_at(self, seq: int) -> Any:
        """The hash of the line with ``seq``, searching back from the end (lines are in seq
        order; a redelivered batch is near the end). ``_MISSING`` when there is none."""
        end = os.fstat(self._fd).st_size
        while end > 0:
            start = self._newline_before(end - 1) + 1
            found, hash_ = _seq_hash(os.pread(self._fd, end - 1 - start, start))
            if found == seq:
                return hash_
            if found is None or found < seq:
                break
            end = start
        return _MISSING

    def _newline_before(self, end: int) -> int:
        """Offset of the last newline before ``end`` (-1: none)."""
        chunk = 64 * 1024
        while end > 0:
            start = max(0, end - chunk)
            found = os.pread(self._fd, end - start, start).rfind(b"\n")
            if found != -1:
                return start + found
            end = start
        return -1

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    async def aclose(self) -> None:
        self.close()


_MISSING: Final = object()


def _seq_hash(line: bytes) -> tuple[int | None, Any]:
    try:
        record = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None, None
    if not isinstance(record, dict):
        return None, None
    seq = record.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        return None, None
    return seq, record.get("hash")


def _field_of(record: ChainRecord, name: str) -> Any:
    try:
        data = msgspec.json.decode(record.data)
    except msgspec.DecodeError:
        return None
    return data.get(name) if isinstance(data, dict) else None


# -- the webhook ---------------------------------------------------------------------------


class WebhookSink:
    """Batches of records as a JSON array, POSTed to ``settings.url``."""

    def __init__(
        self,
        settings: WebhookSinkSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        where = f"audit.webhooks[{settings.name}]"
        self.name = check_sink_name(settings.name)
        try:
            # Plain http to any host is accepted only while no bearer token travels on it.
            check_url(settings.url, allow_http=settings.token_file is None, allow_query=True)
        except ValueError as exc:
            why = " (a bearer token is only sent over https)" if settings.token_file else ""
            raise ConfigError(f"{where}: url {exc}{why}") from None
        if not 1 <= settings.batch_size <= _MAX_BATCH:
            raise ConfigError(f"{where}: batch_size must be 1..{_MAX_BATCH}")
        if settings.timeout <= timedelta(0):
            raise ConfigError(f"{where}: timeout must be positive")
        self._token: Secret | None = None
        if settings.token_file is not None:
            try:
                token = Path(settings.token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"{where}: cannot read token_file {settings.token_file}: {exc.strerror}"
                ) from None
            if not token:
                raise ConfigError(f"{where}: token_file {settings.token_file} is empty")
            self._token = Secret(token)
        self.url = settings.url
        self.batch_size = settings.batch_size
        self.timeout = settings.timeout
        # The lock outlives one attempt comfortably: another replica never overtakes a live one.
        self.lease = settings.timeout * 2 + timedelta(seconds=5)
        self._client = httpx.AsyncClient(
            timeout=settings.timeout.total_seconds(),
            transport=transport,
            follow_redirects=False,
        )

    async def deliver(self, records: Sequence[ChainRecord]) -> None:
        if not records:
            return
        body = b"[" + b",".join(r.data for r in records) + b"]"
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"jit-audit-{records[0].seq}-{records[-1].seq}",
        }
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkError(f"webhook {self.name}: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise SinkError(f"webhook {self.name}: HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


# -- delivery ------------------------------------------------------------------------------

# KEYS: lock, cursor, stream   ARGV: me, now_ms, until_ms, count
# -> {0} another replica holds the lock | {1, cursor or '', entries}
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if owner and owner ~= ARGV[1] and until_ms > tonumber(ARGV[2]) then return {0} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'until', ARGV[3])
local cur = redis.call('GET', KEYS[2])
local start = '0-1'
if cur then start = string.format('%d-0', tonumber(cur) + 1) end
local entries = redis.call('XRANGE', KEYS[3], start, '+', 'COUNT', tonumber(ARGV[4]))
return {1, cur or '', entries}
"""

# KEYS: lock, cursor   ARGV: me, seq  -> 1 moved (or already past) | 0 the lock is not mine
_ADVANCE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: lock   ARGV: me
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


# KEYS: sinks registry, stream, then the cursor of each name in ARGV[2..]
# ARGV: forget_before_ms, then sink names
# -> {-1, 0} a live registered sink was not among the names (ask again) | {trimmed, minid}
# Trims the stream below the smallest cursor of the named sinks (a missing cursor is 0 and
# trims nothing), keeping at least the newest entry; drops registrations older than ARGV[1].
_TRIM = Script("""
local given = {}
for i = 2, #ARGV do given[ARGV[i]] = true end
local reg = redis.call('HGETALL', KEYS[1])
for i = 1, #reg, 2 do
  if tonumber(reg[i + 1]) < tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], reg[i])
  elseif not given[reg[i]] then
    return {-1, 0}
  end
end
local low = nil
for i = 3, #KEYS do
  local c = tonumber(redis.call('GET', KEYS[i]) or '0')
  if low == nil or c < low then low = c end
end
if low == nil or low < 1 then return {0, 0} end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last == 0 then return {0, 0} end
local minid = math.min(low + 1, tonumber(string.match(last[1][1], '^(%d+)-')))
local n = redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', minid))
return {n, minid}
""")


class AuditDelivery:
    """Feeds the stream to the durable sinks. See the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        sinks: Sequence[StreamSink],
        clock: Clock,
        *,
        replica_id: str | None = None,
        poll_interval: timedelta = timedelta(milliseconds=500),
        backoff_base: timedelta = timedelta(seconds=1),
        backoff_cap: timedelta = timedelta(minutes=1),
        forget_after: timedelta = timedelta(hours=1),
        trim_interval: timedelta = timedelta(seconds=1),
    ) -> None:
        """``forget_after``: a sink no replica has registered for that long stops holding
        records in the stream. ``trim_interval``: at most one trim per interval (monotonic)."""
        if forget_after < timedelta(minutes=1):
            raise ConfigError("audit sinks: forget_after must be at least 1 minute")
        names = [s.name for s in sinks]
        if len(names) != len(set(names)):
            raise ConfigError(f"audit sink names must be unique: {names}")
        self.redis = redis
        self.keys = ChainKeys(prefix)
        self.sinks = {s.name: s for s in sinks}
        for name in self.sinks:
            check_sink_name(name)
        self.clock = clock
        self.replica_id = replica_id or new_replica_id()
        self.poll_interval = poll_interval
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._claim = redis.register_script(_CLAIM)
        self._advance = redis.register_script(_ADVANCE)
        self._release = redis.register_script(_RELEASE)
        self.failures: dict[str, int] = dict.fromkeys(self.sinks, 0)
        self.lost: dict[str, int] = dict.fromkeys(self.sinks, 0)
        self.delivered: dict[str, int] = dict.fromkeys(self.sinks, 0)
        self._retry_at: dict[str, float] = dict.fromkeys(self.sinks, 0.0)
        self.forget_after = forget_after
        self.trim_interval = trim_interval
        # Registrations are refreshed well within forget_after (and at least every minute).
        self._register_every = min(forget_after / 4, timedelta(minutes=1)).total_seconds()
        self._registered_at: float | None = None  # monotonic
        self._trim_at = 0.0  # monotonic: no trim before
        self._moved = False  # a cursor moved since the last trim
        self.trimmed = 0  # records this replica trimmed from the stream (for tests and metrics)

    async def deliver_once(self, name: str) -> int:
        """Deliver the next batch to sink ``name``: returns how many records it took (0 when
        nothing is waiting or another replica holds the sink's lock). Raises the sink's error
        (:class:`SinkError`) or Redis's; the cursor then stays where it was."""
        sink = self.sinks[name]
        now_ms = to_ms(self.clock.now())
        lock, cursor = self.keys.lock(name), self.keys.cursor(name)
        reply = await self._claim(
            keys=[lock, cursor, self.keys.stream],
            args=[
                self.replica_id,
                now_ms,
                now_ms + int(sink.lease.total_seconds() * 1000),
                sink.batch_size,
            ],
        )
        if int(reply[0]) == 0:
            return 0
        cur = text(reply[1])
        records = [
            ChainRecord(
                int(text(entry_id).split("-", 1)[0]),
                _field(fields),
            )
            for entry_id, fields in reply[2]
        ]
        if not records:
            return 0
        if cur and records[0].seq > int(cur) + 1:
            gap = records[0].seq - int(cur) - 1
            self.lost[name] += gap
            log.error(
                "audit sink %s: records %d..%d were trimmed from the stream before delivery "
                "(raise audit.stream_maxlen or fix the sink)",
                name,
                int(cur) + 1,
                records[0].seq - 1,
            )
        await asyncio.wait_for(sink.deliver(records), timeout=sink.lease.total_seconds() / 2)
        moved = await self._advance(keys=[lock, cursor], args=[self.replica_id, records[-1].seq])
        if int(moved) != 1:
            log.warning("audit sink %s: lost the delivery lock mid-batch", name)
            return 0
        self.delivered[name] += len(records)
        self._moved = True
        return len(records)

    async def register(self) -> None:
        """Say in Redis that this replica feeds its sinks (now, on the injected clock)."""
        now_ms = to_ms(self.clock.now())
        await self.redis.hset(self.keys.sinks, mapping=dict.fromkeys(self.sinks, now_ms))
        self._registered_at = self.clock.monotonic()

    async def trim(self) -> int:
        """Remove from the stream every record each registered sink has taken (keeping the
        newest). Returns how many entries left the stream."""
        forget_before = to_ms(self.clock.now()) - int(self.forget_after.total_seconds() * 1000)
        for _ in range(3):
            raw = await self.redis.hgetall(self.keys.sinks)
            live = {text(k) for k, v in raw.items() if int(text(v)) >= forget_before}
            names = sorted(live | set(self.sinks))
            reply = await _TRIM(
                self.redis,
                [self.keys.sinks, self.keys.stream, *(self.keys.cursor(n) for n in names)],
                [forget_before, *names],
            )
            if int(reply[0]) >= 0:
                self.trimmed += int(reply[0])
                return int(reply[0])
        return 0  # sinks kept registering meanwhile: the next trim catches up

    async def _housekeeping(self) -> None:
        """Register now and then; trim after a cursor moved (at most once per interval)."""
        now = self.clock.monotonic()
        try:
            if self._registered_at is None or now - self._registered_at >= self._register_every:
                await self.register()
            if self._moved and now >= self._trim_at:
                self._moved = False
                self._trim_at = now + self.trim_interval.total_seconds()
                await self.trim()
        except Exception as exc:  # Redis away: delivery reports it; try again next pass
            log.warning("audit sinks: stream housekeeping failed (%s)", type(exc).__name__)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a failing sink is retried with capped exponential
        backoff (on the injected clock's monotonic time) without holding up the others."""
        try:
            while not stop.is_set():
                await self._housekeeping()
                busy = False
                for name in self.sinks:
                    if stop.is_set():
                        break
                    if self.clock.monotonic() < self._retry_at[name]:
                        continue
                    try:
                        n = await self.deliver_once(name)
                    except Exception as exc:
                        self._failed(name, exc)
                        continue
                    self.failures[name] = 0
                    busy = busy or n > 0
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            stop.wait(), timeout=self.poll_interval.total_seconds()
                        )
        finally:
            await self._release_all()

    def _failed(self, name: str, exc: Exception) -> None:
        self.failures[name] += 1
        delay = backoff(
            self.failures[name], base=self.backoff_base, cap=self.backoff_cap
        ).total_seconds()
        self._retry_at[name] = self.clock.monotonic() + delay
        what = str(exc) if isinstance(exc, SinkError) else type(exc).__name__
        log.warning(
            "audit sink %s: delivery failed (%s); attempt %d, retrying in %.1fs",
            name,
            what,
            self.failures[name],
            delay,
        )

    async def _release_all(self) -> None:
        for name in self.sinks:
            with contextlib.suppress(Exception):
                await self._release(keys=[self.keys.lock(name)], args=[self.replica_id])

    async def sink_lag(self) -> dict[str, int]:
        """Records each sink is behind the chain's head (a sink that never took a record
        counts from seq 0)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.head, "seq")
            for name in self.sinks:
                pipe.get(self.keys.cursor(name))
            head, *cursors = await pipe.execute()
        top = int(text(head)) if head is not None else 0
        return {
            name: max(0, top - (int(text(c)) if c is not None else 0))
            for name, c in zip(self.sinks, cursors, strict=True)
        }

    async def aclose(self) -> None:
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.aclose()


def _field(fields: Any) -> bytes:
    """The ``r`` field of a stream entry (a flat [k, v, ...] list from Lua)."""
    items = list(fields)
    for i in range(0, len(items) - 1, 2):
        if text(items[i]) == "r":
            value = items[i + 1]
            return value if isinstance(value, bytes) else str(value).encode()
    raise ValueError("stream entry without a record")

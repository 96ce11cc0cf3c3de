"""The audit log (the seam), the event type, and the in-process sinks (file, logging, memory).

See the package docstring. With a chain (:class:`~broker.audit.chain.AuditChain`), ``emit``
first appends the event to the shared hash chain in Redis and then hands the chained record
(with ``seq``, ``prev``, ``hash``; followed by a checkpoint record when one fell due) to the
in-process sinks. The durable sinks (JSON-lines file, webhooks) are fed from the chain's Redis
stream by :class:`~broker.audit.sinks.AuditDelivery`, which :meth:`AuditLog.run` drives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from broker.audit.signing import HmacKey
from broker.clock import Clock
from broker.errors import StoreUnavailable
from broker.state.scripts import Op, run

if TYPE_CHECKING:
    from broker.audit.chain import AuditChain
    from broker.audit.sinks import AuditDelivery

__all__ = [
    "CHECKPOINT",
    "AuditEvent",
    "AuditLog",
    "AuditSink",
    "FileSink",
    "LoggingSink",
    "MemorySink",
]

#: The event type of a signed chain checkpoint (written by the chain; callers cannot emit it).
CHECKPOINT: Final = "audit.checkpoint"
#: Field names ``emit`` sets itself; a caller passing one is a bug.
_RESERVED: Final = frozenset({"type", "time", "seq", "prev", "hash"})

log = logging.getLogger("jit.audit")

# Values an audit field may hold. Anything else (a Secret, bytes, an object) is refused.
Value = str | int | float | bool | None | list[str]


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One audit record. ``type`` is a dotted name: ``decision``, ``lease.minted``,
    ``lease.revoked``, ``lease.revoke_failed``, ``auth.failed`` …"""

    type: str
    time: datetime
    outcome: str = "ok"  # ok | deny | error | approval_required
    principal: str | None = None
    lease_id: str | None = None
    task_id: str | None = None
    issuer: str | None = None
    request_id: str | None = None
    reasons: list[str] = msgspec.field(default_factory=list)
    detail: dict[str, Value] = msgspec.field(default_factory=dict)
    # Set by the hash chain (None without one): position, predecessor's hash, own hash.
    seq: int | None = None
    prev: str | None = None
    hash: str | None = None


class AuditSink(Protocol):
    async def write(self, events: Sequence[AuditEvent]) -> None: ...

    async def aclose(self) -> None: ...


_encoder = msgspec.json.Encoder()


class MemorySink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def write(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)

    async def aclose(self) -> None:
        return None


class LoggingSink:
    async def write(self, events: Sequence[AuditEvent]) -> None:
        if not log.isEnabledFor(logging.INFO):  # no encoding for a line nobody keeps
            return
        for e in events:
            log.info("%s", _encoder.encode(e).decode())

    async def aclose(self) -> None:
        return None


class FileSink:
    """Appends one JSON object per line. Opened with mode 0600."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = os.fdopen(fd, "ab", buffering=0)

    async def write(self, events: Sequence[AuditEvent]) -> None:
        data = b"".join(_encoder.encode(e) + b"\n" for e in events)
        await asyncio.to_thread(self._fh.write, data)

    async def aclose(self) -> None:
        self._fh.close()


class AuditLog:
    """Emit events to the chain (if any) and to every in-process sink.

    A sink failure never raises into the caller's path (it is logged). An event that cannot be
    encoded (e.g. it holds a Secret) raises ``TypeError``/``msgspec`` errors. With a chain, an
    event the chain cannot take (Redis unavailable) raises :class:`StoreUnavailable` after the
    unchained event went to the in-process sinks (so at least the log has it): an action that
    cannot be recorded fails, as the rest of the broker does without Redis.
    """

    def __init__(
        self,
        clock: Clock,
        sinks: Sequence[AuditSink] = (),
        *,
        chain: AuditChain | None = None,
        delivery: AuditDelivery | None = None,
        hmac_key: HmacKey | None = None,
    ) -> None:
        self.clock = clock
        self.sinks = list(sinks)
        self.chain = chain
        self.delivery = delivery
        # Without a configured key: a random one, so digests match only within this process.
        self._hmac = hmac_key or HmacKey.generate()

    def add_sink(self, sink: AuditSink) -> None:
        """Subscribe an in-process sink after construction: for a sink whose owner itself
        records audit events (the Shared Signals transmitter), so it exists after the log."""
        self.sinks.append(sink)

    def record(self, type: str, **fields: object) -> AuditEvent:
        """Build (and check) an event without writing it, for :meth:`commit`."""
        if type == CHECKPOINT:
            raise ValueError(f"{CHECKPOINT!r} records are written by the chain only")
        reserved = _RESERVED.intersection(fields)
        if reserved:
            raise TypeError(f"audit.emit() sets {sorted(reserved)} itself")
        event = msgspec.convert(
            {"type": type, "time": self.clock.now(), **fields}, AuditEvent, strict=True
        )
        _encoder.encode(event)  # fail loudly on anything that is not plain data
        return event

    async def emit(self, type: str, **fields: object) -> AuditEvent:
        records, _ = await self._commit([self.record(type, **fields)], (), ())
        return records[0]

    async def commit(
        self,
        events: Sequence[AuditEvent],
        ops: Sequence[Op] = (),
        *,
        cleanup: Sequence[Op] = (),
        redis: Any = None,
    ) -> list[Any]:
        """Send state ``ops`` and record ``events`` together: one round trip with a chain (see
        :mod:`broker.audit.chain`); without one, the ops go to ``redis`` and the events to the
        sinks. Returns one result per op. ``cleanup`` ops follow once the records are in."""
        _, results = await self._commit(list(events), ops, cleanup, redis)
        return results

    def sender(self, redis: Any) -> Callable[[list[Op]], Awaitable[list[Any]]]:
        """Ops sent through the group commit (shared round trips), without records."""

        async def send(ops: list[Op]) -> list[Any]:
            return await self.commit([], ops, redis=redis)

        return send

    async def flush(self) -> None:
        """Send the clean-up ops of earlier commits that wait for the next batch."""
        if self.chain is not None:
            await self.chain.flush()

    async def _commit(
        self,
        events: list[AuditEvent],
        ops: Sequence[Op],
        cleanup: Sequence[Op],
        redis: Any = None,
    ) -> tuple[list[AuditEvent], list[Any]]:
        if self.chain is None:
            results: list[Any] = []
            if ops or cleanup:
                if redis is None:
                    raise ValueError("state ops need a Redis client when the log has no chain")
                results = (await run(redis, [*ops, *cleanup]))[: len(ops)]
            await self._fan_out(events)
            return events, results
        try:
            records, results = await self.chain.commit(events, ops, cleanup)
        except StoreUnavailable as exc:
            log.error(
                "audit events %s could not be chained: %s",
                ",".join(e.type for e in events) or "-",
                exc.message,
            )
            await self._fan_out(events)
            raise
        await self._fan_out(records)
        return records or events, results

    async def _fan_out(self, events: Sequence[AuditEvent]) -> None:
        for sink in self.sinks:
            try:
                await sink.write(events)
            except Exception:  # a sink outage must not break issuance; it is logged
                log.exception("audit sink %s failed", sink.__class__.__name__)

    def hmac(self, value: str) -> str:
        """``hmac-sha256:<hex>``: a keyed digest of a sensitive value (a token) that a record
        may carry instead of the value; whoever holds the key can match a known value."""
        return self._hmac.digest(value)

    def derive_key(self, purpose: bytes) -> bytes:
        """A key derived from the audit HMAC key for ``purpose`` (HKDF; see HmacKey.derive)."""
        return self._hmac.derive(purpose)

    def hmac_matches(self, value: str, digest: str) -> bool:
        """Constant-time check that ``digest`` is :meth:`hmac` of ``value``."""
        return self._hmac.matches(value, digest)

    def jwks(self) -> dict[str, Any]:
        """The public key(s) that verify checkpoint signatures, as a JWK set."""
        return self.chain.jwks() if self.chain is not None else {"keys": []}

    async def run(self, stop: asyncio.Event) -> None:
        """The background work of the audit trail until ``stop`` is set: deliver the stream to
        the durable sinks, and sign a quiet chain's tail when ``checkpoint_interval`` passes."""
        jobs = []
        if self.delivery is not None:
            jobs.append(self.delivery.run(stop))
        if self.chain is not None:
            jobs.append(self._checkpoints(stop))
        if jobs:
            await asyncio.gather(*jobs)

    async def _checkpoints(self, stop: asyncio.Event) -> None:
        assert self.chain is not None
        poll = self.delivery.poll_interval if self.delivery is not None else timedelta(seconds=1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=poll.total_seconds())
            if stop.is_set():
                return
            try:
                record = await self.chain.checkpoint_if_due()
            except StoreUnavailable as exc:
                log.warning("audit checkpoint: %s", exc.message)
                continue
            except Exception:
                log.exception("audit checkpoint failed")
                continue
            if record is not None:
                await self._fan_out([record])

    async def sink_lag(self) -> dict[str, int]:
        """Records each durable sink is behind the chain's head (empty without sinks)."""
        return await self.delivery.sink_lag() if self.delivery is not None else {}

    async def aclose(self) -> None:
        if self.chain is not None:
            await self.chain.aclose()
        if self.delivery is not None:
            await self.delivery.aclose()
        for sink in self.sinks:
            await sink.aclose()

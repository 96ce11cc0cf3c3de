"""The audit log and its first sinks (file, logging, memory). See the package docstring."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

import msgspec

from broker.clock import Clock

__all__ = ["AuditEvent", "AuditLog", "AuditSink", "FileSink", "LoggingSink", "MemorySink"]

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
    """Emit events to every sink. Emission never raises into the caller's path for a sink
    failure (it is logged); an event that cannot be encoded (e.g. it holds a Secret) raises."""

    def __init__(self, clock: Clock, sinks: Sequence[AuditSink] = ()) -> None:
        self.clock = clock
        self.sinks = list(sinks)

    async def emit(self, type: str, **fields: object) -> AuditEvent:
        event = msgspec.convert(
            {"type": type, "time": self.clock.now(), **fields}, AuditEvent, strict=True
        )
        _encoder.encode(event)  # fail loudly on anything that is not plain data
        for sink in self.sinks:
            try:
                await sink.write((event,))
            except Exception:  # a sink outage must not break issuance; it is logged
                log.exception("audit sink %s failed", sink.__class__.__name__)
        return event

    async def aclose(self) -> None:
        for sink in self.sinks:
            await sink.aclose()

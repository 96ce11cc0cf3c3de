"""The suite-wide secret scan (issue 5): every secret the test suite creates is recorded, and at
the end of the session every audit record, log line and Redis value written during the suite is
searched for each of them. One hit fails the run.

Wired in tests/conftest.py: ``Secret.__init__`` registers values, ``AuditLog.emit`` records
each event, a logging handler records every record of the broker's loggers (and warnings and
errors of all loggers), and the Redis fixtures snapshot their keys before cleaning them up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

#: Shorter values are not scanned: they would match by chance (and are not real secrets).
MIN_LENGTH = 16


@dataclass
class LeakScan:
    secrets: set[str] = field(default_factory=set)
    audit: list[bytes] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    redis: list[bytes] = field(default_factory=list)
    allowed: set[str] = field(default_factory=set)

    def add_secret(self, value: str) -> None:
        if len(value) >= MIN_LENGTH:
            self.secrets.add(value)

    def allow(self, value: str) -> None:
        """A secret a test leaks on purpose (to prove that a check catches it)."""
        self.allowed.add(value)

    def find(self) -> list[tuple[str, str]]:
        """(secret shown by its first 6 characters, where) for every secret found."""
        return [(secret, where) for secret, where, _ in self.find_with_context()]

    def find_with_context(self) -> list[tuple[str, str, str]]:
        """Like :meth:`find`, plus the 60 characters before the hit (the secret masked)."""
        sources = {
            "audit records": b"\n".join(self.audit).decode("utf-8", "replace"),
            "log lines": "\n".join(self.logs),
            "Redis values": b"\n".join(self.redis).decode("utf-8", "replace"),
        }
        found: list[tuple[str, str, str]] = []
        for secret in sorted(self.secrets - self.allowed):
            for name, text in sources.items():
                at = text.find(secret)
                if at >= 0:
                    before = text[max(0, at - 60) : at].replace("\n", " | ")
                    found.append((secret[:6] + "…", name, before + "<SECRET>"))
        return found

    @property
    def sizes(self) -> str:
        return (
            f"{len(self.secrets)} secrets; {len(self.audit)} audit records, "
            f"{len(self.logs)} log lines, {len(self.redis)} Redis values"
        )


class CaptureHandler(logging.Handler):
    def __init__(self, scan: LeakScan) -> None:
        super().__init__(logging.DEBUG)
        self.scan = scan

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.scan.logs.append(self.format(record))
        except Exception:  # a broken log call must not break the suite
            self.scan.logs.append(str(record.msg))


async def redis_values(client: Any, pattern: str) -> Iterable[bytes]:
    """Every value under ``pattern``, read by type (DUMP would compress long strings)."""
    out: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        kind = await client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            value: Any = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        elif kind == "set":
            value = await client.smembers(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1)
        elif kind == "stream":
            value = await client.xrange(key, "-", "+")
        else:
            continue
        out.append(key if isinstance(key, bytes) else str(key).encode())
        out.append(_flatten(value))
    return out


def _flatten(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        return b" ".join(_flatten(k) + b"=" + _flatten(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return b" ".join(_flatten(v) for v in value)
    return msgspec.json.encode(value) if value is not None else b""


#: The scan of this test session (tests/conftest.py feeds it).
LEAKS = LeakScan()

"""One socket write per answer under uvicorn (ADR 0068).

uvicorn's httptools protocol writes a response's head and its body with two
``transport.write`` calls, and uvloop sends each at once: two ``send`` system calls per answer,
each of which, on a loopback or a busy host, also pays for waking the reader. This protocol
gives uvicorn a transport that gathers what one step of the event loop writes and sends it
with one write at the end of that step (``call_soon``): the head and the body of an answer leave
together. Everything else is the real transport's: closing sends what is gathered first, and
more than :data:`LIMIT` bytes gathered are sent at once, so a large body is never held back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["LIMIT", "GatheringTransport", "OneWriteProtocol"]

LIMIT = 64 * 1024  # bytes gathered before they are sent without waiting for the step's end


class GatheringTransport:
    """A transport whose writes within one event-loop step leave as one write."""

    __slots__ = ("_loop", "_parts", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(data)
        self._size += len(data)
        if self._size >= LIMIT:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is gathered (nothing to a transport already closing)."""
        parts = self._parts
        if not parts:
            return
        self._parts, self._size = [], 0
        if self._transport.is_closing():
            return
        self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._parts, self._size = [], 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`GatheringTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvloop's TCPTransport has asyncio.Transport's methods but is not its subclass.
        gathering = GatheringTransport(transport, asyncio.get_running_loop())
        super().connection_made(gathering)  # type: ignore[arg-type]

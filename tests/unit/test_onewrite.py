"""One socket write per answer (broker/cli/onewrite.py, ADR 0068): the gathering transport on
its own, and uvicorn serving through it on a real loopback socket (uvloop, as ``jit serve``)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn
import uvloop

from broker.cli.onewrite import LIMIT, GatheringTransport, OneWriteProtocol


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing or self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_writes_of_one_step_leave_as_one_write() -> None:
    real = FakeTransport()
    t = GatheringTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n")
    t.write(b"{}")
    t.write(b"")
    assert real.writes == []
    assert t.get_write_buffer_size() == 45
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"]
    t.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]


async def test_close_sends_what_is_gathered_first() -> None:
    real = FakeTransport()
    t = GatheringTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"head")
    t.writelines([b"bo", b"dy"])
    t.close()
    assert (real.writes, real.closed) == ([b"headbody"], True)
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert real.writes == [b"headbody"]


async def test_abort_and_a_closing_transport_drop_what_is_gathered() -> None:
    loop = asyncio.get_running_loop()
    real = FakeTransport()
    t = GatheringTransport(real, loop)  # type: ignore[arg-type]
    t.write(b"lost")
    t.abort()
    await asyncio.sleep(0)
    assert (real.writes, real.aborted) == ([], True)
    real2 = FakeTransport()
    t2 = GatheringTransport(real2, loop)  # type: ignore[arg-type]
    t2.write(b"late")
    real2.closing = True  # the peer went away before the step ended
    await asyncio.sleep(0)
    assert real2.writes == []


async def test_a_large_body_is_not_held_back() -> None:
    real = FakeTransport()
    t = GatheringTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    chunk = b"x" * (LIMIT // 4)
    for _ in range(5):
        t.write(chunk)
    assert [len(w) for w in real.writes] == [LIMIT]  # sent the moment LIMIT was reached
    await asyncio.sleep(0)
    assert [len(w) for w in real.writes] == [LIMIT, LIMIT // 4]
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real transport's


# -- uvicorn through it, on a real socket ------------------------------------------------------

WRITES: list[int] = []


class CountingProtocol(OneWriteProtocol):
    """Counts the writes that reach the socket's transport (below the gathering one)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        class Counting:
            def write(self, data: bytes) -> None:
                WRITES.append(len(data))
                transport.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(transport, name)

        super().connection_made(Counting())  # type: ignore[arg-type]


BIG = 1_000_000


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    if scope["path"] == "/big":  # streamed in 100 chunks, no Content-Length
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(100):
            await send(
                {"type": "http.response.body", "body": b"b" * (BIG // 100), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})
        return
    body = scope["path"].encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _read_until(sock: socket.socket, needle: bytes, count: int = 1) -> bytes:
    data = b""
    while data.count(needle) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _serve_and(check: Any) -> None:
    async def main() -> None:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
        config = uvicorn.Config(app, http=CountingProtocol, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[lsock]))
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            await asyncio.to_thread(check, port)
        finally:
            server.should_exit = True
            await task

    uvloop.run(main())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_uvicorn_sends_each_answer_with_one_write() -> None:
    def check(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            # two requests in one packet (pipelined), then one that closes the connection
            s.sendall(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\nGET /two HTTP/1.1\r\nhost: x\r\n\r\n")
            got = _read_until(s, b"\r\n\r\n/two")
            assert got.index(b"/one") < got.index(b"/two")
            assert got.count(b"HTTP/1.1 200 OK") == 2
            s.sendall(b"GET /three HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            rest = _read_until(s, b"\x00")  # until the server closes
            assert rest.startswith(b"HTTP/1.1 200 OK")
            assert rest.endswith(b"/three")
        assert len(WRITES) == 3, WRITES  # head and body together, once per answer

    WRITES.clear()
    _serve_and(check)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_streamed_body_arrives_whole() -> None:
    def check(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            got = _read_until(s, b"\x00")
        head, _, body = got.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        assert body.endswith(b"0\r\n\r\n")
        assert body.count(b"b") == BIG

    WRITES.clear()
    _serve_and(check)
    assert len(WRITES) >= BIG // LIMIT  # written as it came, LIMIT at a time at most

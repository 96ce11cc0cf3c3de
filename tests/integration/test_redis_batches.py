"""The broker's own batch sender (``broker.state.scripts.run`` on a standalone or Sentinel
client, ADR 0067) answers exactly what redis-py's pipeline answers, and never hands a
connection with unread replies back to the pool: a timeout, a dropped connection or a
cancelled caller drop that connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    DataError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from broker.state.scripts import Op, Script, _send, run
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration

_ECHO = Script("return {ARGV[1], tonumber(ARGV[2]) + 1, redis.status_reply('fine')}")
_FAIL = Script("return redis.error_reply('NOPE no such thing')")


@pytest.fixture
async def plain(key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def _ops(p: str) -> list[Op]:
    return [
        Op(command=("HSET", f"{p}:h", "a", "1", "b", b"\x00\xff")),
        Op(command=("HGETALL", f"{p}:h")),
        Op(command=("ZADD", f"{p}:z", 5, "m1", 7, "m2")),
        Op(command=("ZADD", f"{p}:z", "LT", 3, "m2")),
        Op(command=("ZRANGE", f"{p}:z", 0, 0, "WITHSCORES")),
        Op(command=("ZCARD", f"{p}:z")),
        Op(command=("GET", f"{p}:missing")),
        Op(command=("INCR", f"{p}:h")),  # WRONGTYPE: an error reply in its place
        _ECHO.op([f"{p}:k"], ["héllo", 41]),
        _FAIL.op([f"{p}:k"]),
        Op(command=("SADD", f"{p}:s", "x", "y")),
        Op(command=("SMEMBERS", f"{p}:s")),
    ]


async def _by_pipeline(client: aioredis.Redis, ops: list[Op]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for op in ops:
            op.queue(pipe)
        return list(await pipe.execute(raise_on_error=False))


def _comparable(results: list[Any]) -> list[Any]:
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in results]


async def test_a_batch_answers_what_redis_pys_pipeline_answers(
    plain: aioredis.Redis, key_prefix: str
) -> None:
    await plain.script_load(_ECHO.source)
    await plain.script_load(_FAIL.source)
    direct = await _send(plain, _ops(f"{key_prefix}:d"))
    piped = await _by_pipeline(plain, _ops(f"{key_prefix}:p"))
    assert _comparable(direct) == _comparable(piped)
    assert direct[1] == {b"a": b"1", b"b": b"\x00\xff"}  # HGETALL's callback: a dict
    assert direct[2] == 2
    assert direct[3] == 0
    assert direct[5] == 2
    assert direct[6] is None
    assert isinstance(direct[7], ResponseError)
    assert "WRONGTYPE" in str(direct[7])
    assert direct[8] == ["héllo".encode(), 42, b"fine"]
    assert isinstance(direct[9], ResponseError)
    assert "NOPE" in str(direct[9])
    assert direct[11] == {b"x", b"y"}
    # The same client still answers in order afterwards (nothing left unread).
    assert await plain.ping() is True


async def test_an_unknown_script_is_loaded_and_only_its_op_sent_again(
    plain: aioredis.Redis, key_prefix: str
) -> None:
    fresh = Script(f"return '{key_prefix}'")  # a source Redis has never seen
    assert await plain.script_exists(fresh.sha) == [False]
    counter = f"{key_prefix}:n"
    results = await run(plain, [Op(command=("INCR", counter)), fresh.op([counter])])
    assert results == [1, key_prefix.encode()]
    assert await plain.get(counter) == b"1"  # the INCR was not repeated
    raw = await _send(plain, [Script(f"return '{key_prefix}-2'").op([counter])])
    assert isinstance(raw[0], NoScriptError)


async def test_an_argument_redis_cannot_take_is_a_data_error_before_anything_is_sent(
    plain: aioredis.Redis, key_prefix: str
) -> None:
    with pytest.raises(DataError):
        await run(plain, [Op(command=("SET", f"{key_prefix}:x", "1")), Op(command=("SET", None))])
    assert await plain.exists(f"{key_prefix}:x") == 0


class _Stalling:
    """A loopback server that does the connection handshake (HELLO, CLIENT), answers the
    first SET of a connection with ``+OK`` and then nothing: the rest of the batch's replies
    never come."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> _Stalling:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        requests = hiredis.Reader()
        answered_set = False
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                requests.feed(data)
                while (request := requests.gets()) is not False:
                    name = request[0].upper()
                    if name == b"HELLO":
                        writer.write(b"%1\r\n$5\r\nproto\r\n:3\r\n")
                    elif name == b"CLIENT" or (name == b"SET" and not answered_set):
                        answered_set = answered_set or name == b"SET"
                        writer.write(b"+OK\r\n")
                await writer.drain()
        writer.close()

    def client(self, retries: int) -> aioredis.Redis:
        return aioredis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=0.3,
            retry=Retry(NoBackoff(), retries),
        )


async def test_a_batch_whose_replies_stop_coming_times_out_drops_the_connection_and_retries() -> (
    None
):
    async with _Stalling() as server:
        client = server.client(retries=1)
        ops = [Op(command=("SET", "a", "1")), Op(command=("SET", "b", "2"))]
        with pytest.raises(RedisTimeoutError):
            await run(client, ops)
        # the first try and the retry, each on a new connection (the first one was dropped)
        assert server.connections == 2
        with pytest.raises(RedisTimeoutError):
            await run(client, ops)
        assert server.connections == 4  # nothing half-read went back to the pool
        await client.aclose()


async def test_a_cancelled_caller_leaves_no_half_read_connection_in_the_pool() -> None:
    async with _Stalling() as server:
        client = server.client(retries=0)
        task = asyncio.create_task(
            run(client, [Op(command=("SET", "a", "1")), Op(command=("SET", "b", "2"))])
        )
        for _ in range(100):
            if server.connections:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the first reply is read, the second never comes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(RedisTimeoutError):
            await run(client, [Op(command=("SET", "c", "3")), Op(command=("SET", "d", "4"))])
        assert server.connections == 2  # the cancelled batch's connection was not reused
        await client.aclose()


async def test_a_refused_connection_is_a_connection_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = aioredis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 1))
    with pytest.raises(RedisConnectionError):
        await run(client, [Op(command=("PING",))])
    await client.aclose()

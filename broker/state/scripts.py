"""Lua scripts and batches of commands, the way the broker sends them to Redis.

redis-py's ``register_script`` checks ``SCRIPT EXISTS`` before every pipeline that holds a
script (a round trip each time) and, on a Redis Cluster client, cannot load a script inside a
pipeline at all (``NOSCRIPT``). Here a script is sent as ``EVALSHA`` — in a pipeline or alone —
and only when Redis answers ``NOSCRIPT`` (after a restart or a failover the script cache is
empty) is it loaded (``SCRIPT LOAD``, on every primary of a cluster) and the command sent again.

:class:`Op` is one command or script call; :func:`run` sends a list of them in one round trip
and returns one result per op, or raises the first Redis error. On a standalone or Sentinel
client the batch is packed by hiredis and written at once on one pooled connection
(:func:`_send_direct`, ADR 0067); on a cluster it is redis-py's pipeline, one per node, in
parallel. Every script touches the keys of one hash slot only, and ops are independent of each
other: none relies on another's result inside the batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.errors import StoreUnavailable

__all__ = ["Op", "ReplicaWait", "ReplicasBehind", "Script", "run"]


@dataclass(frozen=True)
class ReplicaWait:
    """``WAIT replicas timeout_ms`` after a batch, on the batch's own connection (the end of
    its pipeline), so the answer counts the replicas that have every write of the batch."""

    replicas: int
    timeout_ms: int


class ReplicasBehind(StoreUnavailable):
    """The batch was written on the master but fewer replicas than asked acknowledged it in
    time: a failover now could lose it, so the caller treats the batch as in doubt (503)."""


class Script:
    """A Lua script known by its SHA-1; call it with :meth:`__call__` or queue it as an Op."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def op(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> Op:
        return Op(script=self, keys=tuple(keys), args=tuple(args))

    async def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """EVALSHA; on NOSCRIPT, load and try once more."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await load(client, [self])
            return await client.evalsha(self.sha, len(keys), *keys, *args)


@dataclass(frozen=True)
class Op:
    """One command (``command``) or one script call (``script`` with ``keys`` and ``args``)."""

    script: Script | None = None
    keys: tuple[Any, ...] = ()
    args: tuple[Any, ...] = ()
    command: tuple[Any, ...] = field(default=())

    def wire(self) -> tuple[Any, ...]:
        """The command as sent: ``EVALSHA sha numkeys keys… args…`` or ``command``."""
        if self.script is not None:
            return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)
        return self.command

    def queue(self, pipe: Any) -> None:
        pipe.execute_command(*self.wire())


async def load(client: Any, scripts: Sequence[Script]) -> None:
    """SCRIPT LOAD each script (a cluster client sends it to every primary)."""
    for script in scripts:
        await client.script_load(script.source)


async def run(client: Any, ops: Sequence[Op], *, wait: ReplicaWait | None = None) -> list[Any]:
    """Send ``ops`` in one pipeline; a script Redis did not know is loaded and its op sent
    again (the others are not repeated). Returns one result per op; raises the first error.

    ``wait``: each pipeline ends with ``WAIT`` (same connection: it covers every write before
    it); fewer replicas than asked raises :class:`ReplicasBehind` after the op errors are
    checked. Not for a cluster client (a keyless WAIT there goes to other connections)."""
    if not ops:
        return []
    results = await _send(client, ops, wait)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        scripts: dict[str, Script] = {}
        for i in missing:
            script = ops[i].script
            if script is not None:
                scripts[script.sha] = script
        await load(client, list(scripts.values()))
        again = await _send(client, [ops[i] for i in missing], wait)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, RedisError):
            raise result
    return results


async def _send(client: Any, ops: Sequence[Op], wait: ReplicaWait | None = None) -> list[Any]:
    if isinstance(client, Redis):  # standalone or Sentinel (and fakeredis)
        results = await _send_direct(client, ops, wait)
    else:  # a cluster client: one pipeline per node
        async with client.pipeline(transaction=False) as pipe:
            for op in ops:
                op.queue(pipe)
            if wait is not None:
                pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
            results = list(await pipe.execute(raise_on_error=False))
    if wait is None:
        return results
    acked = results.pop()
    if isinstance(acked, RedisError):
        raise acked
    if int(acked) < wait.replicas:
        # Op errors first (the caller would see those anyway), then the doubt.
        for result in results:
            if isinstance(result, RedisError) and not isinstance(result, NoScriptError):
                raise result
        raise ReplicasBehind(
            f"Redis: {int(acked)} of {wait.replicas} replicas acknowledged the write within "
            f"{wait.timeout_ms} ms"
        )
    return results


async def _send_direct(client: Redis, ops: Sequence[Op], wait: ReplicaWait | None) -> list[Any]:
    """The batch as one write on one pooled connection, its replies read under one timeout.

    What redis-py's non-transactional ``Pipeline.execute`` does for this batch (ADR 0067):
    the same connection from the client's pool, the same retry policy (``conn.retry``: a
    connection or timeout error drops the connection and sends the batch again), the same
    reply callbacks, error replies returned in place. Less per command: the whole batch is
    packed by hiredis in C (redis-py encodes every argument in Python first), and the replies
    are read under one ``socket_timeout`` for the batch instead of one timer per reply."""
    commands = [op.wire() for op in ops]
    if wait is not None:
        commands.append(("WAIT", wait.replicas, wait.timeout_ms))
    try:
        packed = b"".join([pack_command(c) for c in commands])
    except TypeError as exc:  # an argument redis-py would refuse too (None, a dict …)
        raise DataError(f"Invalid input for a Redis command: {exc}") from None
    callbacks = client.response_callbacks
    pool: Any = client.connection_pool  # redis-py types get_connection loosely
    conn = await pool.get_connection()
    try:
        return await conn.retry.call_with_retry(  # type: ignore[no-any-return]
            lambda: _exchange(conn, packed, commands, callbacks),
            lambda _error: conn.disconnect(),
        )
    finally:
        await pool.release(conn)


async def _exchange(
    conn: Any, packed: bytes, commands: list[tuple[Any, ...]], callbacks: Any
) -> list[Any]:
    await conn.send_packed_command(packed)
    replies: list[Any] = []
    try:
        # One timer for the batch; ``math.inf`` tells read_response not to start its own.
        # On any failure the connection is dropped (its unread replies must not reach the
        # next borrower): read_response does so itself, and so does the handler below.
        async with asyncio.timeout(conn.socket_timeout):
            for command in commands:
                try:
                    reply = await conn.read_response(timeout=math.inf)
                except ResponseError as exc:  # an error reply, in its place
                    replies.append(exc)
                    continue
                callback = callbacks.get(command[0])
                replies.append(reply if callback is None else callback(reply))
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError("Timeout reading from Redis") from None
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    return replies

"""Durable sinks fed from the stream: the JSON-lines file (a verifiable chain, no duplicates
after a crash, torn lines cut), the webhook's wire format and failure handling (faked at the
transport with httpx.MockTransport), per-sink cursors and locks between replicas, lag, and
records trimmed before delivery. The real-HTTP outage test is in
tests/integration/test_audit_redis.py."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from broker.audit import (
    AuditDelivery,
    AuditLog,
    ChainRecord,
    JsonLinesFileSink,
    SinkError,
    WebhookSink,
    read_chain,
)
from broker.audit.verify import verify_lines
from broker.config import WebhookSinkSettings
from broker.errors import ConfigError
from broker.testing import FakeClock
from tests.unit.test_audit_chain import PREFIX, make_log

TOKEN = "webhook-bearer-token-0123456789abcdef"


async def emit(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await log.emit("e", detail={"i": i})


def delivery(
    redis: aioredis.Redis, clock: FakeClock, *sinks: Any, replica: str = "r1"
) -> AuditDelivery:
    return AuditDelivery(
        redis,
        PREFIX,
        list(sinks),
        clock,
        replica_id=replica,
        poll_interval=timedelta(milliseconds=1),
        backoff_base=timedelta(seconds=1),
        backoff_cap=timedelta(seconds=8),
    )


def delivery_for(
    redis: aioredis.Redis, clock: FakeClock, prefix: str, *sinks: Any
) -> AuditDelivery:
    return AuditDelivery(redis, prefix, list(sinks), clock, replica_id="r1")


async def drain(d: AuditDelivery, name: str) -> int:
    total = 0
    while n := await d.deliver_once(name):
        total += n
    return total


def file_seqs(path: Path) -> list[int]:
    return [msgspec.json.decode(line)["seq"] for line in path.read_bytes().splitlines()]


# -- the file sink -----------------------------------------------------------------------


async def test_the_file_sink_writes_the_chain_byte_for_byte_and_it_verifies(
    fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path
) -> None:
    log = make_log(fake_redis, clock, every=10)
    await emit(log, 25)
    path = tmp_path / "audit" / "audit.jsonl"
    sink = JsonLinesFileSink(path, batch_size=7)
    d = delivery(fake_redis, clock, sink)
    assert await drain(d, "file") == 27  # 25 events + 2 checkpoints, in batches of 7
    assert path.stat().st_mode & 0o777 == 0o600
    stream = [r.data async for r in read_chain(fake_redis, PREFIX)]
    assert path.read_bytes().splitlines() == stream
    assert verify_lines(path.read_bytes().splitlines()).ok
    assert await d.sink_lag() == {"file": 0}
    await emit(log, 5, start=25)  # seq 28..32, and the checkpoint after the 10th since seq 22
    assert await d.sink_lag() == {"file": 6}
    assert await drain(d, "file") == 6
    assert file_seqs(path) == list(range(1, 34))
    await d.aclose()


async def test_the_file_sink_never_writes_a_record_twice_after_a_crash_before_the_cursor(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFileSink(path)
    records = [ChainRecord(i, json.dumps({"seq": i}).encode()) for i in range(1, 6)]
    await sink.deliver(records[:3])
    await sink.deliver(records)  # the cursor never moved: the batch comes again
    assert file_seqs(path) == [1, 2, 3, 4, 5]
    await sink.aclose()


async def test_a_torn_last_line_is_cut_off_and_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":1}\n{"seq":2}\n{"seq":3,"ty')  # a crash mid-write
    sink = JsonLinesFileSink(path)
    records = [ChainRecord(i, json.dumps({"seq": i}).encode()) for i in range(1, 5)]
    with caplog.at_level(logging.WARNING, logger="jit.audit"):
        await sink.deliver(records[2:])
    assert file_seqs(path) == [1, 2, 3, 4]
    assert "torn last line" in caplog.text
    await sink.aclose()


async def test_the_file_sink_refuses_to_mix_another_chain_into_its_file(
    fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path
) -> None:
    """Redis lost its data and the chain starts again at seq 1: the old file is not appended
    to (nor are the new records skipped as "already there"); the sink fails visibly."""
    path = tmp_path / "audit.jsonl"
    old = make_log(fake_redis, clock, prefix="old")
    await emit(old, 12)
    await drain(delivery_for(fake_redis, clock, "old", JsonLinesFileSink(path)), "file")
    before = path.read_bytes()
    new = make_log(fake_redis, clock, prefix="new")
    clock.advance(60)  # (the same events at the same time would make the very same chain)
    await emit(new, 5)
    d = delivery_for(fake_redis, clock, "new", JsonLinesFileSink(path))
    with pytest.raises(SinkError, match="does not continue the file's at seq 5"):
        await d.deliver_once("file")
    await emit(new, 10, start=5)
    with pytest.raises(SinkError, match="move the file aside"):
        await d.deliver_once("file")
    assert path.read_bytes() == before
    assert await d.sink_lag() == {"file": 15}


async def test_a_file_from_before_the_chain_is_not_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"type": "decision", "time": "2030-01-01T00:00:00Z"}\n')
    sink = JsonLinesFileSink(path)
    with pytest.raises(SinkError, match="not a chain record"):
        await sink.deliver([ChainRecord(1, b'{"seq":1}')])
    await sink.aclose()


def test_an_unwritable_audit_file_stops_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"audit\.file"):
        JsonLinesFileSink(blocker / "audit.jsonl")


# -- locks and cursors between replicas ---------------------------------------------------


async def test_only_the_lock_holder_delivers_and_another_replica_takes_over_after_it(
    fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path
) -> None:
    log = make_log(fake_redis, clock)
    await emit(log, 10)
    path = tmp_path / "shared.jsonl"
    a = delivery(fake_redis, clock, JsonLinesFileSink(path, batch_size=4), replica="a")
    b = delivery(fake_redis, clock, JsonLinesFileSink(path, batch_size=4), replica="b")
    assert await a.deliver_once("file") == 4
    assert await b.deliver_once("file") == 0  # a holds the lock
    assert await a.deliver_once("file") == 4
    clock.advance(timedelta(seconds=31))  # a died: its lock ran out
    assert await b.deliver_once("file") == 2  # b goes on from the cursor
    assert await a.deliver_once("file") == 0  # and now b holds it
    assert file_seqs(path) == list(range(1, 11))
    await a.aclose()
    await b.aclose()


async def test_a_stopped_loop_releases_its_locks_for_the_next_replica(
    fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path
) -> None:
    log = make_log(fake_redis, clock)
    await emit(log, 3)
    path = tmp_path / "a.jsonl"
    a = delivery(fake_redis, clock, JsonLinesFileSink(path), replica="a")
    stop = asyncio.Event()
    task = asyncio.create_task(a.run(stop))
    for _ in range(1000):
        if await a.sink_lag() == {"file": 0}:
            break
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, 5)
    await emit(log, 2, start=3)
    b = delivery(fake_redis, clock, JsonLinesFileSink(path), replica="b")
    assert await b.deliver_once("file") == 2  # no wait for a's lock to run out
    assert file_seqs(path) == [1, 2, 3, 4, 5]


async def test_records_trimmed_before_delivery_are_counted_and_logged(
    fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = make_log(fake_redis, clock)
    await emit(log, 3)
    d = delivery(fake_redis, clock, JsonLinesFileSink(tmp_path / "f.jsonl"))
    assert await drain(d, "file") == 3
    await emit(log, 10, start=3)
    await fake_redis.xtrim(f"{PREFIX}:{{audit}}:stream", maxlen=4, approximate=False)
    with caplog.at_level(logging.ERROR, logger="jit.audit"):
        assert await drain(d, "file") == 4
    assert d.lost == {"file": 6}
    assert "records 4..9 were trimmed" in caplog.text


def test_sink_names_must_be_unique_and_plain(fake_redis: aioredis.Redis, tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(ConfigError, match="unique"):
        delivery(
            fake_redis,
            clock,
            JsonLinesFileSink(tmp_path / "1"),
            JsonLinesFileSink(tmp_path / "2"),
        )
    with pytest.raises(ConfigError, match="sink name"):
        JsonLinesFileSink(tmp_path / "3", name="a b:{x}")


# -- the webhook --------------------------------------------------------------------------


def webhook(tmp_path: Path, handler: Any, **over: Any) -> WebhookSink:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = WebhookSinkSettings(
        **{
            "name": "siem",
            "url": "https://siem.example/ingest",
            "token_file": str(token_file),
            "batch_size": 10,
            **over,
        }
    )
    return WebhookSink(settings, transport=httpx.MockTransport(handler))


async def test_the_webhook_posts_a_json_array_of_the_records_with_the_bearer_token(
    fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    log = make_log(fake_redis, clock)
    await emit(log, 12)
    d = delivery(fake_redis, clock, webhook(tmp_path, handler))
    assert await drain(d, "siem") == 12
    assert len(seen) == 2
    first = seen[0]
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["idempotency-key"] == "jit-audit-1-10"
    body = json.loads(first.content)
    assert [r["seq"] for r in body] == list(range(1, 11))
    stream = [r.data async for r in read_chain(fake_redis, PREFIX)]
    # The records go out byte for byte, so the receiver can verify the chain itself.
    assert first.content == b"[" + b",".join(stream[:10]) + b"]"
    await d.aclose()


@pytest.mark.parametrize(
    "failure",
    [httpx.Response(500), httpx.Response(302, headers={"location": "/x"}), httpx.ConnectError],
)
async def test_a_webhook_failure_keeps_the_cursor_and_says_why_without_the_token(
    fake_redis: aioredis.Redis,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    failure: Any,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(failure, httpx.Response):
            return failure
        raise failure("refused", request=request)

    log = make_log(fake_redis, clock)
    await emit(log, 3)
    d = delivery(fake_redis, clock, webhook(tmp_path, handler))
    with pytest.raises(SinkError, match="webhook siem") as info:
        await d.deliver_once("siem")
    assert TOKEN not in str(info.value)
    assert await d.sink_lag() == {"siem": 3}
    await d.aclose()


async def test_the_loop_retries_a_failing_webhook_with_backoff_until_it_takes_everything(
    fake_redis: aioredis.Redis, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[int] = []
    attempts = 0
    hit = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        hit.set()
        if attempts <= 3:
            return httpx.Response(503)
        received.extend(r["seq"] for r in json.loads(request.content))
        return httpx.Response(200)

    log = make_log(fake_redis, clock)
    await emit(log, 25)
    d = delivery(fake_redis, clock, webhook(tmp_path, handler))
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    with caplog.at_level(logging.WARNING, logger="jit.audit"):
        for _ in range(3):  # each failure backs off on the injected clock: move it on
            await asyncio.wait_for(hit.wait(), 5)
            hit.clear()
            clock.advance(timedelta(seconds=8))
        for _ in range(2000):
            if len(received) == 25:
                break
            await asyncio.sleep(0.002)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert received == list(range(1, 26))
    assert d.failures == {"siem": 0}
    assert "HTTP 503" in caplog.text
    assert TOKEN not in caplog.text
    await d.aclose()


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"url": "http://siem.example/ingest"}, "only sent over https"),
        ({"url": "https://user:pw@siem.example/"}, "must not carry credentials"),
        ({"url": "ftp://siem.example/"}, "absolute http"),
        ({"batch_size": 0}, "batch_size"),
        ({"token_file": "/nonexistent/token"}, "cannot read token_file"),
    ],
)
def test_webhook_settings_that_would_leak_or_never_work_stop_start_up(
    tmp_path: Path, over: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        webhook(tmp_path, lambda r: httpx.Response(200), **over)


def test_plain_http_with_a_token_is_fine_to_loopback(tmp_path: Path) -> None:
    webhook(tmp_path, lambda r: httpx.Response(200), url="http://127.0.0.1:9/x")

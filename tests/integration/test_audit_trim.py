"""The audit stream is a buffer, not the archive (issue 14 goal 4): on the real Redis, a record
leaves the stream once every registered sink has taken it and not before; a sink that is down —
even one only another replica feeds — holds trimming back until no replica has registered it
for ``forget_after``; the newest record always stays (the chain's fallback head); the file sink
still verifies from seq 1 and an export of the trimmed stream verifies with ``--partial``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from broker.audit import AuditChain, AuditDelivery, AuditLog, CheckpointSigner, JsonLinesFileSink
from broker.audit.chain import ChainKeys, ChainRecord
from broker.audit.sinks import SinkError
from broker.cli.audit import audit
from broker.errors import ConfigError
from broker.testing import FakeClock
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration


class GateSink:
    """A stream sink that is down until ``up`` is set, and remembers what it took."""

    lease = timedelta(seconds=30)

    def __init__(self, name: str = "siem", batch_size: int = 40) -> None:
        self.name = name
        self.batch_size = batch_size
        self.up = False
        self.took: list[int] = []

    async def deliver(self, records: Sequence[ChainRecord]) -> None:
        if not self.up:
            raise SinkError(f"{self.name}: down")
        self.took.extend(r.seq for r in records)

    async def aclose(self) -> None:
        return None


def writer(
    redis: aioredis.Redis, prefix: str, clock: FakeClock, signer: CheckpointSigner
) -> AuditLog:
    return AuditLog(clock, chain=AuditChain(redis, prefix, clock, signer, checkpoint_every=25))


async def emit(log: AuditLog, n: int) -> None:
    for i in range(n):
        await log.emit("lease.used", detail={"i": i})


async def stream_seqs(redis: aioredis.Redis, prefix: str) -> list[int]:
    entries = await redis.xrange(ChainKeys(prefix).stream)
    return [int(entry_id.decode().split("-")[0]) for entry_id, _ in entries]


async def head_seq(redis: aioredis.Redis, prefix: str) -> int:
    return int(await redis.hget(ChainKeys(prefix).head, "seq") or 0)


async def drain(delivery: AuditDelivery, name: str) -> None:
    while await delivery.deliver_once(name):
        pass


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, audit, list(args), catch_exceptions=False)


async def test_records_leave_the_stream_once_every_sink_has_them_and_not_before(
    real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock, tmp_path: Path
) -> None:
    signer = CheckpointSigner.generate()
    log = writer(real_redis, key_prefix, clock, signer)
    await emit(log, 100)
    top = await head_seq(real_redis, key_prefix)  # 100 records and 4 checkpoints
    path = tmp_path / "audit.jsonl"
    siem = GateSink()
    delivery = AuditDelivery(
        real_redis, key_prefix, [JsonLinesFileSink(path, batch_size=30), siem], clock
    )
    await delivery.register()

    await drain(delivery, "file")  # the file has everything; siem is down
    with pytest.raises(SinkError):
        await delivery.deliver_once("siem")
    assert await delivery.trim() == 0
    assert await stream_seqs(real_redis, key_prefix) == list(range(1, top + 1))

    siem.up = True
    assert await delivery.deliver_once("siem") == 40  # siem has 1..40 now
    assert await delivery.trim() == 40
    assert await stream_seqs(real_redis, key_prefix) == list(range(41, top + 1))

    await drain(delivery, "siem")
    await delivery.trim()
    assert await stream_seqs(real_redis, key_prefix) == [top]  # the newest stays
    assert siem.took == list(range(1, top + 1))

    # The file is the archive and verifies from seq 1; an export of the stream now starts at
    # the newest record and verifies as a partial chain.
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(signer.jwks()))
    result = await cli("verify", str(path), "--key", str(jwks))
    assert result.exit_code == 0, result.output
    assert f"OK: {top} records" in result.output
    await emit(log, 30)  # one more checkpoint lands in the stream after the trim
    out = tmp_path / "export.jsonl"
    exported = await asyncio.to_thread(
        CliRunner(env={"JIT_REDIS_URL": REDIS_URL}).invoke,
        audit,
        ["export", "--prefix", key_prefix, "--out", str(out)],
        catch_exceptions=False,
    )
    assert exported.exit_code == 0, exported.output
    assert f"seq 1..{top - 1} are no longer in the stream" in exported.output
    assert (await cli("verify", str(out), "--key", str(jwks))).exit_code == 1
    result = await cli("verify", str(out), "--key", str(jwks), "--partial")
    assert result.exit_code == 0, result.output
    await delivery.aclose()


async def test_a_sink_only_another_replica_feeds_holds_trimming_back_until_it_is_forgotten(
    real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock, tmp_path: Path
) -> None:
    log = writer(real_redis, key_prefix, clock, CheckpointSigner.generate())
    await emit(log, 60)
    top = await head_seq(real_redis, key_prefix)
    second = aioredis.Redis.from_url(REDIS_URL)
    path = tmp_path / "audit.jsonl"
    # Replica a feeds only the file; replica b also feeds a webhook that is down.
    a = AuditDelivery(real_redis, key_prefix, [JsonLinesFileSink(path)], clock, replica_id="a")
    hook = GateSink("hook")
    b = AuditDelivery(second, key_prefix, [JsonLinesFileSink(path), hook], clock, replica_id="b")
    await a.register()
    await b.register()
    await drain(a, "file")
    assert await a.trim() == 0  # b's webhook has nothing yet
    assert len(await stream_seqs(real_redis, key_prefix)) == top

    # b is gone (it said nothing for forget_after): its webhook no longer holds records back.
    clock.advance(timedelta(minutes=59))
    await a.register()
    assert await a.trim() == 0
    clock.advance(timedelta(minutes=2))
    await a.register()
    assert await a.trim() == top - 1
    assert await real_redis.hkeys(ChainKeys(key_prefix).sinks) == [b"file"]
    await second.aclose()


async def test_the_delivery_loop_trims_and_the_chain_goes_on_after_its_head_was_lost(
    real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock, tmp_path: Path
) -> None:
    log = writer(real_redis, key_prefix, clock, CheckpointSigner.generate())
    delivery = AuditDelivery(
        real_redis,
        key_prefix,
        [JsonLinesFileSink(tmp_path / "audit.jsonl")],
        clock,
        poll_interval=timedelta(milliseconds=5),
        trim_interval=timedelta(0),
    )
    stop = asyncio.Event()
    loop = asyncio.create_task(delivery.run(stop))
    await emit(log, 80)
    top = await head_seq(real_redis, key_prefix)

    async def trimmed() -> bool:
        return await stream_seqs(real_redis, key_prefix) == [top]

    for _ in range(4000):  # a hang guard, not a timing assertion
        if await trimmed():
            break
        await asyncio.sleep(0.005)
    else:
        pytest.fail("the delivery loop did not trim the stream")
    stop.set()
    await loop
    # The head key is lost (evicted): the next append continues from the kept newest record.
    await real_redis.delete(ChainKeys(key_prefix).head)
    fresh = writer(real_redis, key_prefix, clock, CheckpointSigner.generate())
    record = await fresh.emit("lease.used")
    assert record.seq == top + 1
    await delivery.aclose()


async def test_forget_after_below_a_minute_is_refused(
    real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock
) -> None:
    with pytest.raises(ConfigError, match="forget_after"):
        AuditDelivery(real_redis, key_prefix, [], clock, forget_after=timedelta(seconds=5))

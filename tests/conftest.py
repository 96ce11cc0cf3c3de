"""Shared fixtures: clocks, an isolated key prefix on the real Redis, and fakeredis; and the
suite-wide secret scan (tests/leakscan.py): no secret the suite creates may appear in an audit
record, a log line or a Redis value written during the suite."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from broker.audit import AuditLog
from broker.config import RedisSettings
from broker.state.connect import redis_client
from broker.testing import FakeClock
from broker.types import Secret
from tests.leakscan import LEAKS, CaptureHandler, redis_values
from tests.redisfarm import Farm

REDIS_URL = os.environ.get("JIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Run the Redis tests on one of tests/redisfarm.py's topologies instead of REDIS_URL:
# JIT_TEST_REDIS_MODE=standalone|sentinel|cluster (the topology tests choose theirs themselves).
REDIS_MODE = os.environ.get("JIT_TEST_REDIS_MODE") or None

_secret_init = Secret.__init__
_audit_fan_out = AuditLog._fan_out


def _recording_init(self: Secret, value: str) -> None:
    _secret_init(self, value)
    if isinstance(value, str):
        LEAKS.add_secret(value)


async def _recording_fan_out(self: AuditLog, events: Any) -> None:
    # Every record the broker writes reaches the in-process sinks through here (emit and
    # commit alike), chained or not.
    for event in events:
        LEAKS.audit.append(msgspec.json.encode(event))
    await _audit_fan_out(self, events)


def pytest_configure(config: pytest.Config) -> None:
    Secret.__init__ = _recording_init  # type: ignore[method-assign]
    AuditLog._fan_out = _recording_fan_out  # type: ignore[method-assign]
    handler = CaptureHandler(LEAKS)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    for name in ("jit", "broker", "issuers"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = LEAKS.find_with_context()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"secret scan: {LEAKS.sizes}")
    if found:
        if reporter is not None:
            for secret, where, context in found:
                reporter.write_line(
                    f"SECRET LEAK: a secret starting {secret} is in {where}, after: {context!r}"
                )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix unique to one test, so runs never see each other's keys."""
    return f"jittest-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """Real standalone, Sentinel and Cluster topologies (tests/redisfarm.py), each started on
    first use, all stopped at the end of the session."""
    farm = Farm(tmp_path_factory.mktemp("redisfarm"))
    try:
        yield farm
    finally:
        farm.stop()


@pytest.fixture
def test_redis(request: pytest.FixtureRequest) -> RedisSettings:
    """The Redis the tests use: REDIS_URL, or the farm's topology JIT_TEST_REDIS_MODE names."""
    if REDIS_MODE is None:
        return RedisSettings(url=REDIS_URL)
    farm: Farm = request.getfixturevalue("redis_farm")
    return farm.settings(REDIS_MODE)


@pytest.fixture
async def real_redis(key_prefix: str, test_redis: RedisSettings) -> AsyncIterator[Any]:
    """The real Redis (``test_redis``); every key under ``key_prefix`` is deleted after."""
    async for client in redis_under(test_redis, key_prefix):
        yield client


async def redis_under(settings: RedisSettings, key_prefix: str) -> AsyncIterator[Any]:
    """A client for ``settings``; after, the keys under ``key_prefix`` are scanned for leaks
    and deleted (one slot at a time on a cluster)."""
    client = redis_client(settings)
    try:
        await client.ping()
    except Exception as exc:  # the README's test command starts Redis; this should not happen
        pytest.fail(f"Redis ({settings.mode}) is not answering: {exc}")
    yield client
    LEAKS.redis.extend(await redis_values(client, f"{key_prefix}:*"))
    async for batch in _scan(client, f"{key_prefix}:*"):
        if isinstance(client, RedisCluster):
            async with client.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.execute_command("UNLINK", key)
                await pipe.execute()
        else:
            await client.unlink(*batch)
    await client.aclose()


async def _scan(client: Any, pattern: str) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            yield batch
            batch = []
    if batch:
        yield batch


@pytest.fixture
async def fake_redis() -> AsyncIterator[aioredis.Redis]:
    import fakeredis

    client = fakeredis.FakeAsyncRedis()
    yield client
    LEAKS.redis.extend(await redis_values(client, "*"))
    await client.aclose()
